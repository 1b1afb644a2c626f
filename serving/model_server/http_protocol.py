"""uvicorn's httptools protocol (through dae.compat.http), hardened for an unfriendly network:

- every error it writes itself is JSON (`{"error": "..."}`), as TF Serving's are, not
  uvicorn's text/plain "Invalid HTTP request received.";
- a malformed request pipelined behind a valid one is answered after it, in order (uvicorn
  wrote its 400 at once, which the client read as the valid request's answer);
- the request line and headers must arrive within `header_timeout` seconds of the
  connection opening (or of the previous answer) and within `MAX_HEAD_BYTES`: idle and
  byte-by-byte connections are closed with a 408;
- at most `max_connections` are open at once: one more closes the connection idle the
  longest (no request in flight or being read), so idle connections held open cannot lock
  other clients out; only when every connection is busy does the new one get a 503;
- a connection closed while the client is still sending (a refused body, a late header)
  is half-closed, once the answer is flushed, and drained for `LINGER_SECONDS` first, so
  the client reads the answer rather than a connection reset;
- a peer that resets or closes meanwhile is the peer's doing: a debug line, not an error.
"""

from __future__ import annotations

import asyncio
import logging
import socket

import httptools
import orjson

from dae.compat.http import httptools_protocol

log = logging.getLogger("dae.serving")

MAX_HEAD_BYTES = 64 * 1024
LINGER_SECONDS = 1.0


class _Lingering:
    """The transport as a request's cycle sees it: closing it before the request's body
    was read in full lingers instead (see the module's docstring)."""

    def __init__(self, protocol: GuardedHttpProtocol, transport: asyncio.Transport):
        self._protocol, self._transport = protocol, transport

    def __getattr__(self, name):
        return getattr(self._transport, name)

    def close(self) -> None:
        if self._protocol.request_body_unread():
            self._protocol._linger()
        else:
            self._transport.close()


def _unread(transport: asyncio.Transport) -> bool:
    """Bytes from the peer that the event loop has not handed to the protocol yet."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return False
    try:
        probe = socket.socket(fileno=sock.fileno())
    except OSError:  # closed under us: nothing to read
        return False
    try:
        return bool(probe.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except OSError:  # nothing yet (BlockingIOError), or reset: nothing to answer either way
        return False
    finally:
        probe.detach()


class _HeadTooLarge(Exception):
    pass


class GuardedHttpProtocol(httptools_protocol()):
    header_timeout = 10.0
    max_connections = 512

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._conn, self._loop = transport, asyncio.get_running_loop()
        self._pending: tuple[int, str] | None = None  # an error to answer after the request
        self._header_timer: asyncio.TimerHandle | None = None
        self._head_bytes = 0
        self._reading_head = False
        self._lingering = self._eof_pending = False
        self._idle_since = self._loop.time()
        if not self._make_room():
            self._answer_and_close(503, f"too many connections (over {self.max_connections})")
            return
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    # -- the connection cap -----------------------------------------------------------------

    def idle_since(self) -> float | None:
        """When this connection last became idle: open, no request in flight, queued or
        being read, not closing. None while busy."""
        busy = (
            self._reading_head
            or self._lingering
            or self._pending is not None
            or self._conn.is_closing()
            or self.request_in_flight()
            or self.requests_queued()
        )
        return None if busy else self._idle_since

    def _make_room(self) -> bool:
        """Under the cap, or at it with an idle connection to shed (the one idle the
        longest); False when every other open connection is busy."""
        everyone = self.open_connections()
        if len(everyone) <= self.max_connections:
            return True
        others = [c for c in everyone if c is not self and not c._conn.is_closing()]
        if len(others) < self.max_connections:
            return True
        idle = sorted((since, id(c), c) for c in others if (since := c.idle_since()) is not None)
        for _, _, oldest in idle:
            if not _unread(oldest._conn):  # else its request is on its way: busy
                oldest._shed()
                return True
        return False

    def _shed(self) -> None:
        log.debug("closing an idle REST connection: at --rest-max-connections")
        self._disarm()
        self._conn.close()

    # -- header timeout ---------------------------------------------------------------------

    def _arm(self) -> None:
        self._disarm()
        self._head_bytes = 0
        self._header_timer = self._loop.call_later(self.header_timeout, self._headers_late)

    def _disarm(self) -> None:
        if getattr(self, "_header_timer", None) is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if self.request_in_flight():
            return  # re-armed when its answer is sent
        self._answer_and_close(
            408, f"request headers not received within {self.header_timeout:g} s"
        )

    # -- parser callbacks -------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._reading_head = True
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._count_head(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value))
        super().on_header(name, value)

    def _count_head(self, n: int) -> None:
        self._head_bytes += n
        if self._head_bytes > MAX_HEAD_BYTES:
            raise _HeadTooLarge()

    def on_headers_complete(self) -> None:
        self._disarm()
        self._reading_head = False
        super().on_headers_complete()
        self.wrap_request_transport(lambda transport: _Lingering(self, transport))

    def data_received(self, data: bytes) -> None:
        self.cancel_keep_alive()
        if self._pending is not None or self._lingering:
            return  # refusing already: what follows is dropped
        try:
            self.feed(data)
        except httptools.HttpParserUpgrade:
            self._refuse(400, "protocol upgrades are not offered")
        except httptools.HttpParserError as e:
            if isinstance(e.__context__, _HeadTooLarge) or self._head_bytes > MAX_HEAD_BYTES:
                self._refuse(431, f"request line and headers are over {MAX_HEAD_BYTES} bytes")
            else:
                self._refuse(400, f"malformed HTTP request: {str(e)[:100] or type(e).__name__}")

    # -- answers ----------------------------------------------------------------------------

    def _refuse(self, code: int, message: str) -> None:
        """Answer now, unless a request read in full is still being answered: then after
        it (and after any request pipelined before this one)."""
        log.debug("refusing a connection's input: %d %s", code, message)
        if (self.request_in_flight() and not self.request_body_unread()) or self.requests_queued():
            self._pending = (code, message)
            self.pause_reading()
            return
        if self.request_in_flight():  # the error is in this request's own body
            self.abandon_request_body()
        self._answer_and_close(code, message)

    def answer_sent(self) -> bool:
        if self._pending is not None and not self.requests_queued():
            self._answer_and_close(*self._pending)
            return False
        return True

    def awaiting_request(self) -> None:
        self._idle_since = self._loop.time()
        self._arm()

    def _answer_and_close(self, code: int, message: str) -> None:
        self._disarm()
        if self._lingering or self._conn.is_closing():
            return
        body = orjson.dumps({"error": message})
        self._conn.write(
            self.status_line(code)
            + b"content-type: application/json\r\ncontent-length: "
            + str(len(body)).encode()
            + b"\r\nconnection: close\r\n\r\n"
            + body
        )
        self._linger()

    def _linger(self) -> None:
        """Half-close once the answer is flushed, drop what still arrives, close."""
        if self._lingering or self._conn.is_closing():
            return
        self._lingering = True
        if not self._conn.can_write_eof():
            self._conn.close()
            return
        self._loop.call_later(LINGER_SECONDS, self._conn.close)
        self.resume_reading()
        if self._conn.get_write_buffer_size():
            # asyncio would shut down in its own write callback, where a peer's reset is
            # logged as an error: wait for resume_writing at an empty buffer instead.
            self._eof_pending = True
            self._conn.set_write_buffer_limits(high=0)
        else:
            self._half_close()

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._eof_pending and not self._conn.get_write_buffer_size():
            self._eof_pending = False
            self._loop.call_soon(self._half_close)  # after asyncio's write callback returns

    def _half_close(self) -> None:
        if self._conn.is_closing():
            return
        try:
            self._conn.write_eof()
        except OSError as e:  # reset by the peer since the answer was written
            log.debug("REST client gone before the half-close: %s", e)
            self._conn.abort()


def protocol(header_timeout: float, max_connections: int) -> type[GuardedHttpProtocol]:
    """The protocol class for uvicorn.Config(http=...), with these limits."""
    return type(
        "GuardedHttpProtocol",
        (GuardedHttpProtocol,),
        {"header_timeout": header_timeout, "max_connections": max_connections},
    )
