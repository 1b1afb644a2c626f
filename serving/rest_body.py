"""TF Serving's REST predict bodies (util/json_tensor.cc): row ("instances") and columnar
("inputs") requests in, "predictions" / "outputs" out; and the request body itself, read
with its byte limit counted as it arrives and gzip undone (TF Serving's HTTP server accepts
`Content-Encoding: gzip`, util/net_http/server/internal/evhttp_request.cc)."""

from __future__ import annotations

import asyncio
import zlib

import numpy as np
import orjson

from dae.serving.predict import clip, invalid
from dae.serving.servable import ServingError, Signature

MAX_DEPTH = 64  # numpy's most dimensions


class ClientGone(Exception):
    """The client closed the connection before its request was read."""


class BodyTooLarge(ServingError):
    """Refused before the body was read in full: the connection must close after it."""

    def __init__(self, message: str):
        super().__init__("INVALID_ARGUMENT", message)


async def read_body(scope, receive, limit: int, timeout: float) -> bytes:
    """The body, at most `limit` bytes (counted as they arrive, with or without a
    Content-Length), within `timeout` seconds; decompressed when gzip-encoded."""
    headers = dict(scope["headers"])
    length = headers.get(b"content-length", b"0")
    if not length.isdigit():
        raise BodyTooLarge(f"Content-Length '{clip(length.decode('latin-1'))}' is not a number")
    if int(length) > limit:
        raise BodyTooLarge(f"request body of {int(length)} bytes is over the {limit} byte limit")
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise ClientGone()
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    raise BodyTooLarge(f"request body is over the {limit} byte limit")
                chunks.append(chunk)
                if not message.get("more_body", False):
                    break
    except TimeoutError:
        raise ServingError(
            "DEADLINE_EXCEEDED", f"request body not received within {timeout:g} s"
        ) from None
    finally:
        scope["dae.body_bytes"] = size  # for the janitor (memory.py)
    raw = b"".join(chunks)
    encoding = headers.get(b"content-encoding", b"identity").decode("latin-1").strip().lower()
    if encoding == "gzip":
        return _gunzip(raw, limit)
    if encoding not in ("identity", ""):
        raise invalid(f"unsupported Content-Encoding '{clip(encoding)}' (gzip is accepted)")
    return raw


def _gunzip(raw: bytes, limit: int) -> bytes:
    d = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        out = d.decompress(raw, limit + 1)
    except zlib.error as e:
        raise invalid(f"cannot decompress the gzip body: {e}") from None
    if len(out) > limit:
        raise invalid(f"request body is over the {limit} byte limit once decompressed")
    if not d.eof:
        raise invalid("cannot decompress the gzip body: it is truncated")
    return out


def signature_name(body) -> str | None:
    name = body.get("signature_name") if isinstance(body, dict) else None
    if name is not None and not isinstance(name, str):
        raise invalid(
            f"JSON Value: {clip(orjson.dumps(name).decode(), 40)} not formatted correctly. "
            "'signature_name' key must be a string value."
        )
    return name


def _depth(value) -> int:
    depth = 0
    while isinstance(value, list) and value:
        value, depth = value[0], depth + 1
    return depth


def _has_bool(value) -> bool:
    if isinstance(value, list):
        return any(_has_bool(v) for v in value)
    return isinstance(value, bool)


def _array(value, what: str, dtype: np.dtype | None, raw: bytes) -> np.ndarray:
    depth = _depth(value)
    if depth > MAX_DEPTH:
        raise invalid(f"{what} is nested {depth} lists deep; a tensor has at most 64 dimensions")
    try:
        arr = np.asarray(value)
    except ValueError:
        raise invalid(f"{what} is ragged: all rows must have the same shape") from None
    if arr.dtype.kind not in "biuf":
        raise invalid(f"{what} has non-numeric values")
    # np.asarray makes true 1.0 among numbers; TF Serving refuses a bool in a number tensor.
    wants_bool = dtype is not None and dtype.kind == "b"
    maybe = arr.dtype.kind != "b" and not wants_bool and (b"true" in raw or b"false" in raw)
    if maybe and _has_bool(value):
        raise invalid(f"{what} has a JSON boolean (true or false) where numbers are expected")
    return arr


def parse_predict_body(body, sig: Signature, raw: bytes) -> tuple[dict, bool]:
    """TF Serving's two request formats -> ({input name: array}, row format?)."""
    if not isinstance(body, dict):
        raise invalid("request body must be a JSON object")
    if ("instances" in body) == ("inputs" in body):
        raise invalid("request must have exactly one of 'instances' (row) or 'inputs' (columnar)")
    names = list(sig.inputs)

    def dtype(name):
        info = sig.inputs.get(name)
        return info.dtype if info is not None else None

    if "instances" in body:
        rows = body["instances"]
        if not isinstance(rows, list):
            raise invalid("'instances' must be a list")
        if rows and all(isinstance(r, dict) for r in rows):
            keys = set().union(*rows)
            return {
                n: _array([r.get(n) for r in rows], f"input '{clip(n)}'", dtype(n), raw)
                for n in keys
            }, True
        if len(names) != 1:
            raise invalid(f"this signature takes named inputs {names}: send objects")
        return {names[0]: _array(rows, "'instances'", dtype(names[0]), raw)}, True
    cols = body["inputs"]
    if isinstance(cols, dict):
        return {n: _array(v, f"input '{clip(n)}'", dtype(n), raw) for n, v in cols.items()}, False
    if len(names) != 1:
        raise invalid(f"this signature takes named inputs {names}: send an object")
    return {names[0]: _array(cols, "'inputs'", dtype(names[0]), raw)}, False


def format_predict_response(outputs: dict[str, np.ndarray], row: bool) -> dict:
    if not row:
        return {"outputs": next(iter(outputs.values())) if len(outputs) == 1 else outputs}
    if len(outputs) == 1:
        return {"predictions": next(iter(outputs.values()))}
    n = len(next(iter(outputs.values())))
    return {"predictions": [{k: v[i] for k, v in outputs.items()} for i in range(n)]}
