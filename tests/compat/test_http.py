"""dae.compat.http: uvicorn's httptools protocol with dae's names, and a loud CompatError,
naming the attribute and uvicorn's installed version, once what it reaches into is gone.
uvicorn's classes are put back after each test (monkeypatch)."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

import pytest
from uvicorn.protocols.http import httptools_impl
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.server import ServerState

from dae.compat import CompatError
from dae.compat.http import _METHODS, _STATE, httptools_protocol

IMPL = "uvicorn.protocols.http.httptools_impl"
ROOT = Path(__file__).resolve().parents[2]


def gone(what: str, problem: str = "is gone") -> str:
    """The error message's start (a pattern), the version read apart from dae.compat."""
    return re.escape(f"uvicorn {importlib.metadata.version('uvicorn')}: {what} {problem}")


def init_without(names: tuple[str, ...], missing: str):
    """An __init__ that sets every one of `names` but `missing`."""
    source = "def __init__(self, *args, **kwargs):\n    pass\n" + "".join(
        f"    self.{name} = None\n" for name in names if name != missing
    )
    scope: dict = {}
    exec(source, scope)
    return scope["__init__"]


def test_it_is_uvicorns_protocol_under_dae_names():
    cls = httptools_protocol()
    assert issubclass(cls, httptools_impl.HttpToolsProtocol)
    assert httptools_protocol() is cls  # one class, however often it is asked for
    assert cls.status_line(503) == httptools_impl.STATUS_LINE[503]
    for name in ("request_in_flight", "requests_queued", "feed", "open_connections"):
        assert name in vars(cls)


def test_the_serving_protocol_is_built_on_it():
    from dae.serving.model_server.http_protocol import GuardedHttpProtocol

    assert issubclass(GuardedHttpProtocol, httptools_protocol())


@pytest.mark.parametrize("method", list(_METHODS))
def test_fails_loudly_without_a_method(monkeypatch, method):
    monkeypatch.delattr(httptools_impl.HttpToolsProtocol, method)
    with pytest.raises(CompatError, match=gone(f"{IMPL}.HttpToolsProtocol.{method}")):
        httptools_protocol()


def test_fails_loudly_on_a_new_signature(monkeypatch):
    monkeypatch.setattr(
        httptools_impl.HttpToolsProtocol, "on_header", lambda self, name, value, raw: None
    )
    what, problem = f"{IMPL}.HttpToolsProtocol.on_header", "takes (self, name, value, raw)"
    with pytest.raises(CompatError, match=gone(what, problem)):
        httptools_protocol()


@pytest.mark.parametrize(
    "cls_name, attribute", [(c, a) for c, names in _STATE.items() for a in names]
)
def test_fails_loudly_once_a_connection_attribute_is_gone(monkeypatch, cls_name, attribute):
    cls = getattr(httptools_impl, cls_name)
    monkeypatch.setattr(cls, "__init__", init_without(_STATE[cls_name], attribute))
    with pytest.raises(CompatError, match=gone(f"{IMPL}.{cls_name}.{attribute}")):
        httptools_protocol()


def test_fails_loudly_once_the_request_count_is_gone(monkeypatch):
    monkeypatch.setattr(ServerState, "__init__", init_without(("connections",), "x"))
    with pytest.raises(CompatError, match=gone("uvicorn.server.ServerState.total_requests")):
        httptools_protocol()


@pytest.mark.parametrize("method", ["pause_reading", "resume_reading"])
def test_fails_loudly_without_flow_control(monkeypatch, method):
    monkeypatch.delattr(FlowControl, method)
    what = f"uvicorn.protocols.http.flow_control.FlowControl.{method}"
    with pytest.raises(CompatError, match=gone(what)):
        httptools_protocol()


def test_fails_loudly_once_answers_are_reported_otherwise(monkeypatch):
    monkeypatch.setattr(httptools_impl.HttpToolsProtocol, "on_headers_complete", lambda self: None)
    what = f"{IMPL}.HttpToolsProtocol.on_headers_complete"
    with pytest.raises(CompatError, match=gone(what, "no longer passes on_response_complete")):
        httptools_protocol()


def test_fails_loudly_once_answers_go_out_another_way(monkeypatch):
    async def send(self, message):  # writes through something else than self.transport
        self.protocol.write_out(message)

    monkeypatch.setattr(httptools_impl.RequestResponseCycle, "send", send)
    what = f"{IMPL}.RequestResponseCycle.send"
    with pytest.raises(CompatError, match=gone(what, "no longer writes and closes")):
        httptools_protocol()


def test_fails_loudly_without_status_lines(monkeypatch):
    monkeypatch.delattr(httptools_impl, "STATUS_LINE")
    with pytest.raises(CompatError, match=gone(f"{IMPL}.STATUS_LINE")):
        httptools_protocol()


def test_fails_loudly_without_the_module(monkeypatch):
    monkeypatch.setitem(sys.modules, IMPL, None)
    with pytest.raises(CompatError, match=gone(f"module {IMPL}")):
        httptools_protocol()


def test_nothing_outside_dae_compat_imports_uvicorns_protocols():
    """dae's own packages (the installed dae.serving, dae.pipeline, ... are these folders)."""
    found = []
    for folder in ("dae", "serving", "pipeline", "components"):
        for path in (ROOT / folder).rglob("*.py"):
            if path.is_relative_to(ROOT / "dae" / "compat"):
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
                if isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module]
                found += [f"{path}: {n}" for n in names if n.startswith("uvicorn.protocols")]
    assert not found
