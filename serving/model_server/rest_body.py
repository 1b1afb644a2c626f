"""TF Serving's REST predict bodies (util/json_tensor.cc): row ("instances") and columnar
("inputs") requests in, "predictions" / "outputs" out; and the request body itself, read
with its byte limit counted as it arrives and gzip undone (TF Serving's HTTP server accepts
`Content-Encoding: gzip`, util/net_http/server/internal/evhttp_request.cc)."""

from __future__ import annotations

import asyncio
import zlib

import numpy as np
import orjson

from dae.serving.model_server.predict import Limits, check_rows, clip, invalid
from dae.serving.model_server.servable import ServingError, Signature

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


def _strings(value, what: str) -> np.ndarray:
    """A DT_STRING input: JSON strings (as UTF-8) and {"b64": ...} objects, as bytes."""

    def leaf(v):
        if isinstance(v, list):
            return [leaf(x) for x in v]
        if isinstance(v, str):
            return v.encode()
        decoded = _b64(v)
        if decoded is None:
            raise invalid(f"{what} has {_json_type(v)} values where strings are expected")
        return decoded

    arr = np.array(leaf(value), dtype=object)
    if any(isinstance(v, list) for v in arr.flat):
        raise invalid(f"{what} is ragged: all rows must have the same shape")
    return arr


def _array(value, what: str, dtype: np.dtype | None, raw: bytes) -> np.ndarray:
    depth = _depth(value)
    if depth > MAX_DEPTH:
        raise invalid(f"{what} is nested {depth} lists deep; a tensor has at most 64 dimensions")
    if dtype is not None and dtype.kind in "OSU":
        return _strings(value, what)
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
        if rows and all(isinstance(r, dict) and not _is_b64(r) for r in rows):
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


def _jsonable(name: str, value: np.ndarray):
    """A string output as JSON strings, or {"b64": ...} when its name ends in "_bytes"
    (json_tensor.cc IsNamedTensorBytes); numbers unchanged."""
    import base64

    if value.dtype.kind not in "OS":
        return value
    if name.endswith("_bytes"):
        convert = lambda b: {"b64": base64.b64encode(b).decode()}  # noqa: E731
    else:
        convert = lambda b: b.decode("utf-8", "replace") if isinstance(b, bytes) else str(b)  # noqa: E731
    return np.vectorize(convert, otypes=[object])(value).tolist() if value.size else []


def format_predict_response(outputs: dict[str, np.ndarray], row: bool) -> dict:
    outputs = {k: _jsonable(k, v) for k, v in outputs.items()}
    if row and len(outputs) > 1:  # MakeRowFormatJsonFromTensors: one batch size for all
        sizes = {k: len(v) if np.ndim(v) else None for k, v in outputs.items()}
        if None in sizes.values() or len(set(sizes.values())) > 1:
            raise invalid(
                f"outputs have no common batch size for the row format: {sizes}; "
                "send a columnar ('inputs') request"
            )
    if not row:
        return {"outputs": next(iter(outputs.values())) if len(outputs) == 1 else outputs}
    if len(outputs) == 1:
        return {"predictions": next(iter(outputs.values()))}
    n = len(next(iter(outputs.values())))
    return {"predictions": [{k: v[i] for k, v in outputs.items()} for i in range(n)]}


# -- classify and regress (util/json_tensor.cc) ------------------------------------------

INT64_MAX, UINT64_MAX = 2**63 - 1, 2**64 - 1
_KINDS = {"bytes_list": "bytes", "float_list": "float", "int64_list": "int64"}


def _debug(value) -> str:
    """JsonValueToDebugString: compact JSON, cut at 256 bytes."""
    return orjson.dumps(value)[:256].decode("utf-8", "replace")


def _json_type(value) -> str:
    if value is None:
        return "Null"
    if isinstance(value, bool):
        return "True" if value else "False"
    kinds = ((dict, "Object"), (list, "Array"), (str, "String"), (int | float, "Number"))
    return next(name for t, name in kinds if isinstance(value, t))


def _is_b64(value) -> bool:
    """IsValBase64Object: an object of exactly one key, "b64", with a string."""
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def _b64(value) -> bytes | None:
    """{"b64": "..."} decoded; None when `value` is not such an object."""
    import base64
    import binascii

    if not _is_b64(value):
        return None
    text = value["b64"]
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise invalid("Unable to base64 decode") from None


def _add_value(value, name: str, feature) -> None:
    """AddValueToFeature: the first element sets the feature's kind; later ones must match."""
    kind = feature.WhichOneof("kind")

    def into(want: str):
        if kind not in (None, want):
            raise invalid(
                f"Unexpected element type in feature: {clip(name)} expecting type: {_KINDS[kind]}"
            )
        return getattr(feature, want).value

    if isinstance(value, bool):
        into("int64_list").append(int(value))
    elif isinstance(value, str):
        into("bytes_list").append(value.encode())
    elif isinstance(value, float):
        into("float_list").append(value)
    elif isinstance(value, int):
        if value > INT64_MAX:
            raise invalid(f"Feature: {clip(name)} has uint64_t element. Only int64_t is supported.")
        into("int64_list").append(value)
    elif (decoded := _b64(value)) is not None:
        into("bytes_list").append(decoded)
    else:
        raise invalid(
            f"Feature: {clip(name)} has element with unexpected JSON type: {_json_type(value)}"
        )


def _fill_example(value, example) -> None:
    """MakeExampleFromJsonObject: {feature: value or [values]} -> a tf.Example; a list of
    one JSON type goes in at once, anything else element by element (and its errors)."""
    if not isinstance(value, dict):
        raise invalid(f"Example must be JSON object but got JSON {_json_type(value)}")
    for name, content in value.items():
        feature = example.features.feature[name]
        values = content if isinstance(content, list) else [content]
        kinds = {type(v) for v in values}
        if kinds == {float}:
            feature.float_list.value.extend(values)
        elif kinds == {int} and max(values) <= INT64_MAX:
            feature.int64_list.value.extend(values)
        elif kinds == {str}:
            feature.bytes_list.value.extend(v.encode() for v in values)
        else:
            for v in values:
                _add_value(v, name, feature)


def fill_classify_regress_request(raw: bytes, request, limits: Limits) -> None:
    """FillClassifyRegressRequestFromJson: {"signature_name"?, "context"?, "examples"} into
    a ClassificationRequest or RegressionRequest (a context makes example_list_with_context).
    More than `limits.max_rows` examples are refused before any is converted."""
    if not raw.strip():
        raise invalid("JSON Parse error: The document is empty")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise invalid(f"JSON Parse error: {clip(e, 200)}") from None
    if not isinstance(body, dict):
        raise invalid(f"JSON Value: {_debug(body)} Is not object")
    name = signature_name(body)
    if name is not None:
        request.model_spec.signature_name = name
    inputs = request.input
    if "context" in body:
        _fill_example(body["context"], inputs.example_list_with_context.context)
    examples = body.get("examples")
    if examples is None and "examples" not in body:
        raise invalid(
            f"JSON Value: {_debug(body)} When method is classify, key 'examples' "
            "is expected and was not found"
        )
    if not isinstance(examples, list):
        raise invalid(f"JSON Value: {_debug(body)} Expecting 'examples' value to be an list/array")
    if not examples:
        raise invalid(f"JSON Value: {_debug(body)} 'examples' value is an empty array")
    check_rows("inputs", len(examples), limits)
    target = (
        inputs.example_list_with_context.examples
        if "context" in body
        else inputs.example_list.examples
    )
    for value in examples:
        _fill_example(value, target.add())


def _decimal(value: float) -> bytes:
    """WriteDecimal: a float32 as its shortest round-trip text, whole numbers with '.0',
    NaN and infinities as TF Serving writes them."""
    f = np.float32(value)
    if np.isnan(f):
        return b"NaN"
    if np.isinf(f):
        return b"-Infinity" if f < 0 else b"Infinity"
    text = f"{f:g}"
    if np.float32(text) != f:
        text = f"{f:.9g}"
    if "." not in text and "e" not in text:
        text += ".0"
    return text.encode()


def classification_json(result) -> bytes:
    """MakeJsonFromClassificationResult: {"results": [[[label, score], ...], ...]}."""
    if not result.classifications:
        raise invalid("Cannot convert empty ClassificationResults to JSON")
    rows = (
        b"["
        + b",".join(
            b"[" + orjson.dumps(c.label) + b"," + _decimal(c.score) + b"]" for c in entry.classes
        )
        + b"]"
        for entry in result.classifications
    )
    return b'{"results":[' + b",".join(rows) + b"]}"


def regression_json(result) -> bytes:
    """MakeJsonFromRegressionResult: {"results": [value, ...]}."""
    if not result.regressions:
        raise invalid("Cannot convert empty RegressionResults to JSON")
    return b'{"results":[' + b",".join(_decimal(r.value) for r in result.regressions) + b"]}"
