"""TF Serving's REST API as a plain ASGI app: same paths, bodies and status codes.

POST /v1/models/{name}[/versions/{v}|/labels/{l}]:predict   row or columnar
POST /v1/models/{name}[/versions/{v}|/labels/{l}]:classify  {"examples": [...], "context"?}
POST /v1/models/{name}[/versions/{v}|/labels/{l}]:regress   likewise (model_server.inference)
GET  /v1/models/{name}[/versions/{v}|/labels/{l}]           model version status
GET  /v1/models/{name}[/versions/{v}|/labels/{l}]/metadata  signature_def

Paths follow TF Serving's (model_servers/http_rest_api_util.cc): matched without case,
versions of ASCII digits only; anything else is a 400 "Malformed request". Every answer,
errors included, is JSON (`{"error": "..."}`); protocol-level errors are written by
`http_protocol` in the same shape.
"""

from __future__ import annotations

import logging
import re
import time

import orjson
from google.protobuf import json_format
from tensorflow_serving.apis.classification_pb2 import ClassificationRequest
from tensorflow_serving.apis.regression_pb2 import RegressionRequest

from dae.serving.apis import json_tensor
from dae.serving.model_server import inference, monitoring, status
from dae.serving.model_server.json_predict import fill_predict_request, make_json_from_tensors
from dae.serving.model_server.model_config import PROMETHEUS_PATH
from dae.serving.model_server.predict import Predictor, clip, invalid
from dae.serving.model_server.rest_body import (
    BodyTooLarge,
    ClientGone,
    classification_json,
    fill_classify_regress_request,
    parse_body,
    read_body,
    regression_json,
    signature_name,
)
from dae.serving.model_server.servable import ServingError

log = logging.getLogger("dae.serving.model_server.rest")

_SPEC = r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>[0-9]+)|/labels/(?P<label>[^/:]+))?"
POST_PATH = re.compile(_SPEC + r":(?P<verb>classify|regress|predict)$", re.IGNORECASE)
GET_PATH = re.compile(_SPEC + r"(?P<verb>/metadata)?$", re.IGNORECASE)
# TF Serving's ToHTTPStatusCode (model_servers/http_server.cc).
HTTP_STATUS = {
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "NOT_FOUND": 404,
    "RESOURCE_EXHAUSTED": 429,
    "UNAVAILABLE": 503,
    "UNIMPLEMENTED": 501,
    "DEADLINE_EXCEEDED": 408,
    "INTERNAL": 500,
    "OUT_OF_RANGE": 400,
    "CANCELLED": 499,
    "ALREADY_EXISTS": 409,
    "ABORTED": 409,
    "PERMISSION_DENIED": 403,
    "UNAUTHENTICATED": 401,
}
INT64_MAX = 2**63 - 1


def _version(raw: str | None) -> int | None:
    if raw is None:
        return None
    if len(raw) > 19 or int(raw) > INT64_MAX:  # ASCII digits: the path's pattern
        raise invalid(f"Failed to convert version: {clip(raw)} to numeric.")
    return int(raw)


async def _send(send, code: int, body: bytes, media=b"application/json", close=False) -> None:
    headers = [(b"content-type", media), (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": code, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class RestApp:
    """The ASGI callable uvicorn runs."""

    def __init__(
        self,
        predictor: Predictor,
        max_body_bytes: int,
        body_timeout: float = 60.0,
        metrics_path: str | None = PROMETHEUS_PATH,
    ):
        self.predictor, self.metrics_path = predictor, metrics_path
        self.max_body_bytes, self.body_timeout = max_body_bytes, body_timeout

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        start, method, path = time.perf_counter(), scope["method"], scope["path"]
        if path == self.metrics_path and method == "GET":
            media = monitoring.CONTENT_TYPE.encode()
            await _send(send, 200, self.predictor.metrics(), media)
            return
        code, close = "OK", False
        try:
            body = await self._route(scope, receive, method, path)
        except ClientGone:
            log.info(
                "client %s disconnected before its request was read: %s %s",
                _client(scope),
                method,
                clip(path),
            )
            return
        except ServingError as e:
            code, close = e.code, isinstance(e, BodyTooLarge) or e.code == "DEADLINE_EXCEEDED"
            log.debug("%s: %s", e.code, e)
            body = orjson.dumps({"error": str(e)})
        except Exception as e:  # a bug of ours: 500, and the server keeps answering
            log.exception("internal error on %s %s", method, clip(path))
            code, body = "INTERNAL", orjson.dumps({"error": f"{type(e).__name__}: {e}"})
        self.predictor.record(code, scope.get("dae.body_bytes", 0))
        await _send(send, HTTP_STATUS.get(code, 200 if code == "OK" else 500), body, close=close)
        if log.isEnabledFor(logging.DEBUG):
            ms = (time.perf_counter() - start) * 1e3
            log.debug("%s %s %s %.1f ms", method, clip(path), code, ms)

    async def _route(self, scope, receive, method: str, path: str) -> bytes:
        m = (POST_PATH if method == "POST" else GET_PATH).match(path)
        if not m or method not in ("POST", "GET"):
            raise invalid(f"Malformed request: {method} {clip(path)}")
        name, label, verb = m["name"], m["label"], (m["verb"] or "").lower()
        version = _version(m["version"])
        if verb == "predict":
            return await self._predict(scope, receive, name, version, label)
        if verb in ("classify", "regress"):
            return await self._classify_regress(scope, receive, verb, name, version, label)
        predictor = self.predictor
        if verb == "/metadata":
            msg = status.metadata_response(predictor.servable(name, version, label))
            return orjson.dumps(status.rest_metadata(msg))
        msg = status.status_response(predictor, name, version)  # a label is not looked at
        return orjson.dumps(
            json_format.MessageToDict(
                msg, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
            )
        )

    async def _predict(self, scope, receive, name, version, label) -> bytes:
        predictor = self.predictor
        raw = await read_body(scope, receive, self.max_body_bytes, self.body_timeout)
        fast = json_tensor.loads(raw, ("instances", "inputs"))
        if fast:  # one float tensor: only for a signature that takes exactly that
            sig = predictor.signature(predictor.servable(name, version, label), fast[2])
            (input_name, info), *others = sig.inputs.items()
            fast = None if others or info.dtype.kind != "f" else fast
        if fast:
            inputs, row = {input_name: fast[1]}, fast[0] == "instances"
        else:  # the generic path: any body TF Serving takes, and every error message
            doc = parse_body(raw)
            servable = predictor.servable(name, version, label)
            sig = predictor.signature(servable, signature_name(doc))
            inputs, row = fill_predict_request(doc, sig, raw)
        _, _, outputs = await predictor.predict(name, version, sig.name, inputs, label)
        return make_json_from_tensors(outputs, row)

    async def _classify_regress(self, scope, receive, verb, name, version, label) -> bytes:
        """TF Serving's ProcessClassifyRequest / ProcessRegressRequest: the JSON examples
        as the gRPC request, answered by the same code (model_server.inference)."""
        raw = await read_body(scope, receive, self.max_body_bytes, self.body_timeout)
        make = ClassificationRequest if verb == "classify" else RegressionRequest
        request = make()
        request.model_spec.name = name
        if version is not None:
            request.model_spec.version.value = version
        if label:
            request.model_spec.version_label = label
        fill_classify_regress_request(raw, request, self.predictor.limits)
        if verb == "classify":
            response = await inference.classify(self.predictor, request)
            return classification_json(response.result)
        response = await inference.regress(self.predictor, request)
        return regression_json(response.result)


def _client(scope) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "?"


def make_app(
    predictor: Predictor,
    max_body_bytes: int,
    body_timeout: float = 60.0,
    metrics_path: str | None = PROMETHEUS_PATH,
) -> RestApp:
    return RestApp(predictor, max_body_bytes, body_timeout, metrics_path)
