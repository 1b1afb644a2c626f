"""uvicorn: `dae serve`'s REST front end speaks HTTP/1.1 through uvicorn's httptools protocol,
a private class (uvicorn.protocols.http.httptools_impl.HttpToolsProtocol) that
dae.serving.model_server.http_protocol hardens. Everything that reads or drives uvicorn's
per-connection state (its request cycle, pipeline, flow control, server state, keep-alive
timer, status lines) is named here, on a subclass; the hardened protocol uses only these
names, the asyncio Protocol methods and httptools' parser callbacks."""

from __future__ import annotations

import functools
import sys

from dae.compat.checks import _attr, _fail, _module

_LIB, _PATCH = "uvicorn", "httptools_protocol"
_IMPL = "uvicorn.protocols.http.httptools_impl"

# What the subclass overrides or calls on HttpToolsProtocol, with the parameters it passes.
_METHODS = {
    "connection_made": ("self", "transport"),
    "connection_lost": ("self", "exc"),
    "data_received": ("self", "data"),
    "resume_writing": ("self",),
    "on_message_begin": ("self",),
    "on_url": ("self", "url"),
    "on_header": ("self", "name", "value"),
    "on_headers_complete": ("self",),
    "on_response_complete": ("self",),
    "_unset_keepalive_if_required": ("self",),
}
# Attributes set in __init__ (so only its code says they exist), by class.
_STATE = {
    "HttpToolsProtocol": (
        "transport",
        "parser",
        "flow",
        "pipeline",
        "cycle",
        "server_state",
        "connections",
    ),
    "RequestResponseCycle": (
        "transport",
        "more_body",
        "response_complete",
        "disconnected",
        "message_event",
    ),
}


def _sets(cls, names: tuple[str, ...]) -> None:
    """`cls.__init__` still assigns each of `names` (an instance attribute)."""
    init = _attr(_LIB, _PATCH, cls, "__init__")
    for name in names:
        if name not in init.__code__.co_names:
            _fail(_LIB, _PATCH, f"{cls.__module__}.{cls.__qualname__}.{name}")


def httptools_protocol() -> type:
    """uvicorn's HttpToolsProtocol, subclassed with dae's names for what the hardened
    protocol needs of it. Checked on every call: the module, the methods overridden or
    called (their parameters), the instance attributes read, STATUS_LINE, and that each
    request's cycle still reports its answer through on_response_complete and writes and
    closes through its transport (which wrap_request_transport wraps)."""
    impl = _module(_LIB, _PATCH, _IMPL)
    base = _attr(_LIB, _PATCH, impl, "HttpToolsProtocol")
    for name, params in _METHODS.items():
        _attr(_LIB, _PATCH, base, name, params)
    for cls_name, names in _STATE.items():
        _sets(_attr(_LIB, _PATCH, impl, cls_name), names)
    flow = _module(_LIB, _PATCH, "uvicorn.protocols.http.flow_control")
    flow_control = _attr(_LIB, _PATCH, flow, "FlowControl")
    for name in ("pause_reading", "resume_reading"):
        _attr(_LIB, _PATCH, flow_control, name, ("self",))
    state = _attr(_LIB, _PATCH, _module(_LIB, _PATCH, "uvicorn.server"), "ServerState")
    _sets(state, ("total_requests",))
    if "on_response_complete" not in base.on_headers_complete.__code__.co_names:
        _fail(
            _LIB,
            _PATCH,
            f"{_IMPL}.HttpToolsProtocol.on_headers_complete",
            "no longer passes on_response_complete to the request's cycle",
        )
    send = _attr(_LIB, _PATCH, _attr(_LIB, _PATCH, impl, "RequestResponseCycle"), "send")
    if not {"transport", "write", "close"} <= set(send.__code__.co_names):
        _fail(
            _LIB,
            _PATCH,
            f"{_IMPL}.RequestResponseCycle.send",
            "no longer writes and closes through its transport",
        )
    _attr(_LIB, _PATCH, impl, "STATUS_LINE")
    return _subclass(base)


@functools.cache
def _subclass(base: type) -> type:
    status_lines = sys.modules[base.__module__].STATUS_LINE

    class HttpToolsConnection(base):
        """One REST connection of uvicorn's, in dae's words. Subclasses implement
        `answer_sent` and `awaiting_request`."""

        @staticmethod
        def status_line(code: int) -> bytes:
            return status_lines[code]

        def request_in_flight(self) -> bool:
            """A request's head was read and its answer is not written yet."""
            return self.cycle is not None and not self.cycle.response_complete

        def request_body_unread(self) -> bool:
            """The latest request's body has not been read in full."""
            return self.cycle is not None and self.cycle.more_body

        def requests_queued(self) -> bool:
            """Pipelined requests wait behind the one being answered."""
            return bool(self.pipeline)

        def abandon_request_body(self) -> None:
            """The latest request's body cannot be read: its app sees a disconnect."""
            self.cycle.disconnected = True
            self.cycle.message_event.set()

        def wrap_request_transport(self, wrap) -> None:
            """The latest request's cycle writes and closes through wrap(transport)."""
            if self.cycle is not None:
                self.cycle.transport = wrap(self.cycle.transport)

        def feed(self, data: bytes) -> bool:
            """Parse `data` (parser errors raise); False once the connection is lost."""
            if self.parser is None:
                return False
            self.parser.feed_data(data)
            return True

        def pause_reading(self) -> None:
            self.flow.pause_reading()

        def resume_reading(self) -> None:
            self.flow.resume_reading()

        def cancel_keep_alive(self) -> None:
            """Data arrived: uvicorn's keep-alive timer no longer applies."""
            self._unset_keepalive_if_required()

        def open_connections(self) -> set:
            """Every open connection of this server (protocol instances), this one too."""
            return self.connections

        def on_response_complete(self) -> None:
            """uvicorn's hook once an answer is written: `answer_sent()` False means the
            connection is closing (the answer is counted, nothing more is started)."""
            if not self.answer_sent():
                self.server_state.total_requests += 1
                return
            super().on_response_complete()
            if not self.transport.is_closing() and not self.request_in_flight():
                self.awaiting_request()

        def answer_sent(self) -> bool:
            return True

        def awaiting_request(self) -> None:
            pass

    return HttpToolsConnection
