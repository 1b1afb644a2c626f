"""TF Serving's REST predict bodies (util/json_tensor.cc): row ("instances") and columnar
("inputs") requests in, "predictions" / "outputs" out; and the request body itself, read
with its byte limit counted as it arrives and gzip undone (TF Serving's HTTP server accepts
`Content-Encoding: gzip`, util/net_http/server/internal/evhttp_request.cc)."""

from __future__ import annotations

import asyncio
import zlib

import orjson

from dae.serving.apis import json_parse
from dae.serving.apis.json_numbers import decimal
from dae.serving.apis.json_parse import debug_string
from dae.serving.apis.json_parse import json_type as _json_type
from dae.serving.model_server.json_predict import b64_value as _b64
from dae.serving.model_server.predict import Limits, check_rows, clip, invalid
from dae.serving.model_server.servable import ServingError


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


def signature_name(doc) -> str | None:
    """FillSignature: the optional "signature_name", a string."""
    name = doc.get("signature_name")
    if "signature_name" in doc and not isinstance(name, str):
        raise invalid(
            f"JSON Value: {debug_string(doc)} not formatted correctly. "
            "'signature_name' key must be a string value."
        )
    return name


def parse_body(raw: bytes) -> dict:
    """ParseJson: the body's JSON object, or TF Serving's error."""
    try:
        doc = json_parse.parse(raw)
    except json_parse.JsonError as e:
        raise invalid(str(e)) from None
    if not isinstance(doc, dict):
        raise invalid(f"JSON Value: {debug_string(doc)} Is not object")
    return doc


# -- classify and regress (util/json_tensor.cc) ------------------------------------------

INT64_MAX, UINT64_MAX = 2**63 - 1, 2**64 - 1
_KINDS = {"bytes_list": "bytes", "float_list": "float", "int64_list": "int64"}


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
    body = parse_body(raw)
    name = signature_name(body)
    if name is not None:
        request.model_spec.signature_name = name
    inputs = request.input
    if "context" in body:
        _fill_example(body["context"], inputs.example_list_with_context.context)
    examples = body.get("examples")
    if examples is None and "examples" not in body:
        raise invalid(
            f"JSON Value: {debug_string(body)} When method is classify, key 'examples' "
            "is expected and was not found"
        )
    if not isinstance(examples, list):
        raise invalid(
            f"JSON Value: {debug_string(body)} Expecting 'examples' value to be an list/array"
        )
    if not examples:
        raise invalid(f"JSON Value: {debug_string(body)} 'examples' value is an empty array")
    check_rows("inputs", len(examples), limits)
    target = (
        inputs.example_list_with_context.examples
        if "context" in body
        else inputs.example_list.examples
    )
    for value in examples:
        _fill_example(value, target.add())


def classification_json(result) -> bytes:
    """MakeJsonFromClassificationResult: {"results": [[[label, score], ...], ...]}."""
    if not result.classifications:
        raise invalid("Cannot convert empty ClassificationResults to JSON")
    rows = (
        b"["
        + b",".join(
            b"[" + orjson.dumps(c.label) + b"," + decimal(c.score) + b"]" for c in entry.classes
        )
        + b"]"
        for entry in result.classifications
    )
    return b'{"results":[' + b",".join(rows) + b"]}"


def regression_json(result) -> bytes:
    """MakeJsonFromRegressionResult: {"results": [value, ...]}."""
    if not result.regressions:
        raise invalid("Cannot convert empty RegressionResults to JSON")
    return b'{"results":[' + b",".join(decimal(r.value) for r in result.regressions) + b"]}"
