"""TF Serving's REST API on Starlette: same paths, bodies and status codes.

POST /v1/models/{name}[/versions/{v}]:predict   row ("instances") or columnar ("inputs")
GET  /v1/models/{name}[/versions/{v}]           model version status
GET  /v1/models/{name}[/versions/{v}]/metadata  signature_def
"""

from __future__ import annotations

import logging
import re
import time

import numpy as np
import orjson
from google.protobuf import json_format
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from dae.serving import json_tensor, status
from dae.serving.predict import Predictor, invalid
from dae.serving.servable import ServingError

log = logging.getLogger("dae.serving.rest")

PATH = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>[^/:]+))?"
    r"(?P<verb>/metadata|:predict|:classify|:regress)?$"
)
METRICS_PATH = "/monitoring/prometheus/metrics"
HTTP_STATUS = {"INVALID_ARGUMENT": 400, "FAILED_PRECONDITION": 400, "NOT_FOUND": 404,
               "RESOURCE_EXHAUSTED": 429, "UNAVAILABLE": 503, "UNIMPLEMENTED": 501,
               "INTERNAL": 500}  # fmt: skip


def _json(obj, code: int = 200) -> Response:
    body = orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)
    return Response(body, status_code=code, media_type="application/json")


def _error(e: ServingError) -> Response:
    return _json({"error": str(e)}, HTTP_STATUS.get(e.code, 500))


def _array(value, what: str) -> np.ndarray:
    try:
        arr = np.asarray(value)
    except ValueError:
        raise invalid(f"{what} is ragged: all rows must have the same shape") from None
    if arr.dtype.kind not in "biuf":
        raise invalid(f"{what} has non-numeric values")
    return arr


def parse_predict_body(body: dict, input_names: list[str]) -> tuple[dict, bool]:
    """TF Serving's two request formats -> ({input name: array}, row format?)."""
    if not isinstance(body, dict):
        raise invalid("request body must be a JSON object")
    if ("instances" in body) == ("inputs" in body):
        raise invalid("request must have exactly one of 'instances' (row) or 'inputs' (columnar)")
    if "instances" in body:
        rows = body["instances"]
        if not isinstance(rows, list):
            raise invalid("'instances' must be a list")
        if rows and all(isinstance(r, dict) for r in rows):
            names = set().union(*rows)
            return {n: _array([r.get(n) for r in rows], f"input '{n}'") for n in names}, True
        if len(input_names) != 1:
            raise invalid(f"this signature takes named inputs {input_names}: send objects")
        return {input_names[0]: _array(rows, "'instances'")}, True
    cols = body["inputs"]
    if isinstance(cols, dict):
        return {n: _array(v, f"input '{n}'") for n, v in cols.items()}, False
    if len(input_names) != 1:
        raise invalid(f"this signature takes named inputs {input_names}: send an object")
    return {input_names[0]: _array(cols, "'inputs'")}, False


def format_predict_response(outputs: dict[str, np.ndarray], row: bool) -> dict:
    if not row:
        return {"outputs": next(iter(outputs.values())) if len(outputs) == 1 else outputs}
    if len(outputs) == 1:
        return {"predictions": next(iter(outputs.values()))}
    n = len(next(iter(outputs.values())))
    return {"predictions": [{k: v[i] for k, v in outputs.items()} for i in range(n)]}


def _version(raw: str | None) -> int | None:
    if raw is None:
        return None
    if not raw.isdigit():
        raise invalid(f"version must be an integer, got '{raw}'")
    return int(raw)


def make_app(predictor: Predictor, max_body_bytes: int) -> Starlette:
    async def predict(request: Request, name: str, version: int | None) -> Response:
        length = int(request.headers.get("content-length") or 0)
        if length > max_body_bytes:
            raise invalid(f"request body of {length} bytes is over the {max_body_bytes} limit")
        raw = await request.body()
        if len(raw) > max_body_bytes:
            raise invalid(f"request body is over the {max_body_bytes} byte limit")
        fast = json_tensor.loads(raw, ("instances", "inputs"))
        if fast:  # one float tensor: only for a signature that takes exactly that
            sig = predictor.signature(predictor.servable(name, version), fast[2])
            (input_name, info), *others = sig.inputs.items()
            fast = None if others or info.dtype.kind != "f" else fast
        if fast:
            inputs, row = {input_name: fast[1]}, fast[0] == "instances"
        else:  # the generic path: any body TF Serving takes, and every error message
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError as e:
                raise invalid(f"JSON parse error: {e}") from None
            sig = predictor.signature(
                predictor.servable(name, version),
                body.get("signature_name") if isinstance(body, dict) else None,
            )
            inputs, row = parse_predict_body(body, list(sig.inputs))
        _, _, outputs = await predictor.predict(name, version, sig.name, inputs)
        if len(outputs) == 1:
            key = b'{"predictions":' if row else b'{"outputs":'
            body = key + json_tensor.dumps(next(iter(outputs.values()))) + b"}"
            return Response(body, media_type="application/json")
        return _json(format_predict_response(outputs, row))

    async def dispatch(request: Request) -> Response:
        start = time.perf_counter()
        response = await route(request)
        if log.isEnabledFor(logging.DEBUG):
            ms = (time.perf_counter() - start) * 1e3
            log.debug(
                "%s %s %d %.1f ms", request.method, request.url.path, response.status_code, ms
            )
        return response

    async def route(request: Request) -> Response:
        if request.url.path == METRICS_PATH:
            return Response(predictor.metrics(), media_type="text/plain; version=0.0.4")
        m = PATH.match(request.url.path)
        try:
            if not m:
                raise ServingError("NOT_FOUND", f"Malformed request: {request.url.path}")
            name, verb = m["name"], m["verb"]
            version = _version(m["version"])
            if verb == ":predict" and request.method == "POST":
                return await predict(request, name, version)
            if verb in (":classify", ":regress"):
                raise ServingError("UNIMPLEMENTED", f"{verb[1:]} is not offered by denoisers")
            if request.method != "GET" or verb == ":predict":
                raise ServingError("INVALID_ARGUMENT", f"Malformed request: {request.method}")
            if verb == "/metadata":
                msg = status.metadata_response(predictor.servable(name, version))
                out = json_format.MessageToDict(msg, preserving_proto_field_name=True)
                return _json(status.rest_metadata(out))
            msg = status.status_response(predictor, name, version)
            return _json(json_format.MessageToDict(
                msg, preserving_proto_field_name=True, always_print_fields_with_no_presence=True,
            ))  # fmt: skip
        except ServingError as e:
            log.debug("%s: %s", e.code, e)
            return _error(e)
        except Exception as e:  # a bug of ours: 500, and the server keeps answering
            log.exception("internal error on %s", request.url.path)
            return _error(ServingError("INTERNAL", f"{type(e).__name__}: {e}"))

    routes = [Route("/{path:path}", dispatch, methods=["GET", "POST", "PUT", "DELETE"])]
    return Starlette(routes=routes)
