"""uvicorn's httptools protocol, hardened for an unfriendly network:

- every error it writes itself is JSON (`{"error": "..."}`), as TF Serving's are, not
  uvicorn's text/plain "Invalid HTTP request received.";
- a malformed request pipelined behind a valid one is answered after it, in order (uvicorn
  wrote its 400 at once, which the client read as the valid request's answer);
- the request line and headers must arrive within `header_timeout` seconds of the
  connection opening (or of the previous answer) and within `MAX_HEAD_BYTES`: idle and
  byte-by-byte connections are closed with a 408;
- at most `max_connections` are open at once; one more gets a 503 and is closed;
- a connection closed while the client is still sending (a refused body, a late header)
  is half-closed and drained for `LINGER_SECONDS` first, so the client reads the answer
  rather than a connection reset.
"""

from __future__ import annotations

import asyncio

import httptools
import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

MAX_HEAD_BYTES = 64 * 1024
LINGER_SECONDS = 1.0


class _Lingering:
    """The transport as a request's cycle sees it: closing it before the request's body
    was read in full lingers instead (see the module's docstring)."""

    def __init__(self, protocol: GuardedHttpProtocol):
        self._protocol, self._transport = protocol, protocol.transport

    def __getattr__(self, name):
        return getattr(self._transport, name)

    def close(self) -> None:
        cycle = self._protocol.cycle
        if cycle is not None and cycle.more_body:
            self._protocol._linger()
        else:
            self._transport.close()


class _HeadTooLarge(Exception):
    pass


class GuardedHttpProtocol(HttpToolsProtocol):
    header_timeout = 10.0
    max_connections = 512

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._pending: tuple[int, str] | None = None  # an error to answer after the request
        self._header_timer: asyncio.TimerHandle | None = None
        self._head_bytes = 0
        self._lingering = False
        if len(self.connections) > self.max_connections:
            self._answer_and_close(503, f"too many connections (over {self.max_connections})")
            return
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    # -- header timeout ---------------------------------------------------------------------

    def _arm(self) -> None:
        self._disarm()
        self._head_bytes = 0
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_late)

    def _disarm(self) -> None:
        if getattr(self, "_header_timer", None) is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if self._in_flight():
            return  # re-armed when its answer is sent
        self._answer_and_close(
            408, f"request headers not received within {self.header_timeout:g} s"
        )

    def _in_flight(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    # -- parser callbacks -------------------------------------------------------------------

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
        super().on_headers_complete()
        if self.cycle is not None:
            self.cycle.transport = _Lingering(self)

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        if self._pending is not None or self._lingering or self.parser is None:
            return  # refusing already: what follows is dropped
        try:
            self.parser.feed_data(data)
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
        self.logger.debug("refusing a connection's input: %d %s", code, message)
        if (self._in_flight() and not self.cycle.more_body) or self.pipeline:
            self._pending = (code, message)
            self.flow.pause_reading()
            return
        if self._in_flight():  # the error is in this request's own body
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        self._answer_and_close(code, message)

    def on_response_complete(self) -> None:
        if self._pending is not None and not self.pipeline:
            self.server_state.total_requests += 1
            self._answer_and_close(*self._pending)
            return
        super().on_response_complete()
        if not self.transport.is_closing() and not self._in_flight():
            self._arm()

    def _answer_and_close(self, code: int, message: str) -> None:
        self._disarm()
        if self._lingering or self.transport.is_closing():
            return
        body = orjson.dumps({"error": message})
        self.transport.write(
            STATUS_LINE[code]
            + b"content-type: application/json\r\ncontent-length: "
            + str(len(body)).encode()
            + b"\r\nconnection: close\r\n\r\n"
            + body
        )
        self._linger()

    def _linger(self) -> None:
        """Half-close (the answer is flushed first), drop what still arrives, close."""
        if self._lingering or self.transport.is_closing():
            return
        self._lingering = True
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()
        self.flow.resume_reading()
        self.loop.call_later(LINGER_SECONDS, self.transport.close)


def protocol(header_timeout: float, max_connections: int) -> type[GuardedHttpProtocol]:
    """The protocol class for uvicorn.Config(http=...), with these limits."""
    return type(
        "GuardedHttpProtocol",
        (GuardedHttpProtocol,),
        {"header_timeout": header_timeout, "max_connections": max_connections},
    )
