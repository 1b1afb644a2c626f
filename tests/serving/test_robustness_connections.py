"""`dae serve`'s REST connections under attack: peers that reset or close mid-conversation,
and idle connections held open to crowd out other clients (--rest-max-connections)."""

from __future__ import annotations

import re
import resource
import socket

import httpx
import numpy as np
import orjson
import pytest
from hostile import GOOD_BODY, PREDICT, post, responses, still_serving, wait

# A first answer large enough that the client is still reading it while the server goes on.
BATCH = b'{"instances": ' + orjson.dumps(np.full((8, 28, 28, 1), 0.5).tolist()) + b"}"
ERROR_LINE = re.compile(r"^(ERROR|CRITICAL)\b|\s(ERROR|CRITICAL)\s|Traceback", re.MULTILINE)


def connect(server, timeout: float = 10.0) -> socket.socket:
    host, port = server.rest.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=timeout)


def read_exactly(s: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n and (chunk := s.recv(n - len(data))):
        data += chunk
    return data


def closed_by_server(s: socket.socket) -> bool:
    """The server closed `s` (EOF, after any answer it wrote, or a reset)."""
    try:
        while chunk := s.recv(65536):
            del chunk
        return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def new_log(server, start: int) -> str:
    return server.log.read_text()[start:]


# ---- a peer that closes mid-conversation ---------------------------------------------------


def test_a_client_closing_after_its_first_pipelined_answer_is_not_a_server_error(server):
    """Two requests pipelined, the second one malformed; the client reads the first answer
    and closes at once. The server's answer to the second meets a reset connection: that is
    the peer's doing, not an error of the server's (it logged a traceback from write_eof)."""
    one = server.http.post(PREDICT, content=BATCH)
    assert one.status_code == 200
    first = post(PREDICT, BATCH)
    with connect(server) as s:  # the first answer's exact size, read off a raw connection
        s.sendall(first)
        size = len(read_exactly(s, len(one.content) + 4096).partition(b"\r\n\r\n")[0]) + 4
    size += len(one.content)
    start = len(server.log.read_text())
    for _ in range(30):  # the close races the server's second answer: most attempts hit it
        with connect(server) as s:
            s.sendall(first + b"NOT HTTP AT ALL\r\n\r\n")
            ((status, _, _),) = responses(read_exactly(s, size))
            assert status == 200
    still_serving(server)
    log = new_log(server, start)
    assert not ERROR_LINE.search(log), log[-3000:]
