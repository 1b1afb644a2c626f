"""`dae serve`'s REST connections under attack: peers that reset or close mid-conversation,
and idle connections held open to crowd out other clients (--rest-max-connections)."""

from __future__ import annotations

import re
import socket

import httpx
import numpy as np
import orjson
from hostile import GOOD_BODY, PREDICT, post, raw_http, responses, still_serving

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


def read_answer(s: socket.socket) -> bytes:
    """One whole answer (with a Content-Length) off `s`."""
    data = b""
    while chunk := s.recv(65536):
        data += chunk
        head, sep, body = data.partition(b"\r\n\r\n")
        length = re.search(rb"content-length: *(\d+)", head, re.IGNORECASE)
        if sep and length and len(body) >= int(length.group(1)):
            break
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


# ---- idle connections held open against --rest-max-connections -----------------------------


def test_idle_connections_over_the_cap_cannot_lock_clients_out(make_server):
    """One client holds five times the cap in idle connections, four times over: the oldest
    idle ones are closed for the newcomers, and a keep-alive client and a client opening a
    connection per request lose no request. (They all got a 503 until the header timeout.)"""
    cap = 8
    server = make_server("--rest-max-connections", str(cap), "--rest-header-timeout-seconds", "120")
    held: list[socket.socket] = []
    try:
        with httpx.Client(base_url=server.rest, timeout=30) as client:
            for _ in range(4):
                assert client.post(PREDICT, content=GOOD_BODY).status_code == 200
                batch = [connect(server, timeout=5) for _ in range(5 * cap)]
                held += batch
                assert all(closed_by_server(s) for s in batch[:-cap])  # the oldest first
                for s in batch[-cap:]:
                    s.settimeout(0.1)
                    assert not closed_by_server(s)  # the newest stay open
                fresh = raw_http(server.rest, post(PREDICT, GOOD_BODY, "Connection: close\r\n"))
                assert [status for status, _, _ in responses(fresh)] == [200]
            assert client.post(PREDICT, content=GOOD_BODY).status_code == 200
    finally:
        for s in held:
            s.close()
    assert not ERROR_LINE.search(server.log.read_text().partition("serving model")[2])


def test_busy_connections_are_never_shed(make_server):
    """A request in flight (its body half sent) or being read (half a request line) keeps
    its connection through any number of newcomers; once every connection is busy, a new
    one gets a 503 naming the cap, as before."""
    server = make_server("--rest-max-connections", "4", "--rest-header-timeout-seconds", "120")
    request = post(PREDICT, GOOD_BODY)
    split = len(request) - 100

    def busy(n: int) -> list[tuple[socket.socket, bytes]]:
        out = []
        for i in range(n):
            s, cut = connect(server), (split if i % 2 == 0 else 10)  # in its body, in its line
            s.sendall(request[:cut])
            out.append((s, request[cut:]))
        return out

    def finish(conns) -> None:
        for s, rest in conns:
            s.sendall(rest)
            ((status, _, body),) = responses(read_answer(s))
            assert status == 200 and "predictions" in orjson.loads(body)
            s.close()

    two = busy(2)
    idle = [connect(server, timeout=5) for _ in range(20)]
    assert all(closed_by_server(s) for s in idle[:-2])
    finish(two)  # through 20 newcomers at a cap of 4
    for s in idle:
        s.close()

    four = busy(4)
    refused = raw_http(server.rest, post(PREDICT, GOOD_BODY), timeout=5)
    ((status, _, body),) = responses(refused)
    assert status == 503 and "connections" in orjson.loads(body)["error"]
    finish(four)
    still_serving(server)


def _outward_address() -> str | None:
    """This machine's address toward other hosts (a UDP connect sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))
        except OSError:
            return None
        address = s.getsockname()[0]
    return None if address.startswith("127.") else address


def test_like_tf_serving_it_listens_on_every_address(tmp_path, model_dir):
    """TF Serving's gRPC and REST ports answer on every address of the host (a Pod's own
    address, not only loopback): so does `dae serve` unless --host says otherwise."""
    import pytest
    from support import Server

    from dae.serving.model_server.process import copy_version

    address = _outward_address()
    if address is None:
        pytest.skip("this machine has no address but loopback")
    base = tmp_path / "denoiser"
    base.mkdir()
    copy_version(model_dir, base, 1)
    server = Server(base, host=None)
    try:
        for port in (server.grpc_port, server.rest_port):
            socket.create_connection((address, port), timeout=10).close()
        answer = httpx.get(f"http://{address}:{server.rest_port}/v1/models/denoiser", timeout=30)
        assert answer.json()["model_version_status"][0]["state"] == "AVAILABLE"
    finally:
        server.stop()


def test_a_server_that_never_gets_ready_is_not_left_running(tmp_path, model_dir):
    """The test and bench harness: a server that times out is stopped, not orphaned."""
    import pytest
    from support import Server

    from dae.serving.model_server.process import copy_version

    base = tmp_path / "denoiser"
    base.mkdir()
    copy_version(model_dir, base, 1)
    before = {p.pid for p in _dae_serves()}
    # A later --host wins: it serves, but never on the address the harness waits for.
    with pytest.raises(TimeoutError, match="not ready"):
        Server(base, "--host", "0.0.0.0", ready_seconds=3)
    assert {p.pid for p in _dae_serves()} <= before


def _dae_serves():
    import psutil

    processes = psutil.process_iter(["cmdline"])
    return [p for p in processes if "serve" in (p.info["cmdline"] or [])[1:3]]
