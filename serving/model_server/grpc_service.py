"""TF Serving's gRPC services on grpc.aio, with tensorflow-serving-api's generated stubs:
PredictionService (Predict, Classify, Regress, MultiInference, GetModelMetadata) and
ModelService (GetModelStatus)."""

from __future__ import annotations

import logging
import time

import grpc
import numpy as np
from tensorflow_serving.apis import model_service_pb2_grpc, predict_pb2, prediction_service_pb2_grpc

from dae.serving.apis.tensor_proto import DT_STRING, DTYPES, fill_tensor_proto, to_ndarray
from dae.serving.model_server import inference, status
from dae.serving.model_server.predict import Predictor, check_dims, clip, invalid
from dae.serving.model_server.servable import ServingError

log = logging.getLogger("dae.serving.grpc")


def _abort_code(code: str) -> grpc.StatusCode:
    return getattr(grpc.StatusCode, code, grpc.StatusCode.INTERNAL)


def _version(spec) -> int | None:
    return spec.version.value if spec.HasField("version") else None


class _Undecodable:
    """What a handler gets for request bytes that are not its message."""

    def __init__(self, message: str):
        self.message = message


def _safe(deserializer):
    """grpc.aio answers UNKNOWN, with a traceback in the log, when a request does not parse;
    TF Serving (C++) answers INTERNAL. A client's bytes are its mistake: INVALID_ARGUMENT."""

    def parse(data: bytes):
        try:
            return deserializer(data)
        except Exception as e:  # DecodeError, or RecursionError on deep nesting
            return _Undecodable(f"the request is not a valid message: {clip(e, 200)}")

    return parse


class _SafeHandlers(grpc.GenericRpcHandler):
    """The generated services, each request deserializer wrapped in `_safe`."""

    def __init__(self, handlers):
        self.handlers = handlers

    def add_generic_rpc_handlers(self, handlers) -> None:  # the generated add_*_to_server call
        self.handlers.extend(handlers)

    def service(self, details):
        for h in self.handlers:
            found = h.service(details)
            if found is not None:
                return found._replace(request_deserializer=_safe(found.request_deserializer))
        return None


class _Handler:
    async def _guard(self, context, request, call):
        """Run `call`; every outcome counted by its code; errors as the status, without a
        traceback for a client's mistake (and aborted outside the except block, so no
        exception keeps the request's buffers alive)."""
        start = time.perf_counter()
        name = call.__qualname__.split(".")[1]
        code = "OK"
        try:
            if isinstance(request, _Undecodable):
                raise invalid(request.message)
            response = await call()
        except ServingError as e:
            code, message = e.code, str(e)
        except Exception as e:  # a bug of ours: INTERNAL, and the server keeps answering
            log.exception("internal error in %s", name)
            code, message = "INTERNAL", f"{type(e).__name__}: {e}"
        size = 0 if isinstance(request, _Undecodable) else request.ByteSize()
        self.predictor.record(code, size)
        if code == "OK":
            if log.isEnabledFor(logging.DEBUG):
                log.debug("gRPC %s OK %.1f ms", name, (time.perf_counter() - start) * 1e3)
            return response
        log.debug("gRPC %s %s: %s", name, code, message)
        await context.abort(_abort_code(code), clip(message, 2000))


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer, _Handler):
    def __init__(self, predictor: Predictor, max_message_bytes: int):
        self.predictor = predictor
        self.max_message_bytes = max_message_bytes

    def _decode(self, request, sig) -> dict[str, np.ndarray]:
        """The inputs as arrays; each tensor's declared shape checked first (a short float_val
        is repeated to fill it, so a few bytes could otherwise ask for gigabytes)."""
        inputs = {}
        for name, proto in request.inputs.items():
            if proto.tensor_shape.unknown_rank:
                raise invalid(f"tensor parsing error: input '{clip(name)}' has an unknown rank")
            dims = [d.size for d in proto.tensor_shape.dim]
            itemsize = DTYPES.get(proto.dtype, np.dtype("f8")).itemsize
            check_dims(sig, name, dims, itemsize, self.predictor.limits, proto.dtype == DT_STRING)
            try:
                inputs[name] = to_ndarray(proto)
            except Exception as e:
                raise invalid(f"tensor parsing error: input '{name}': {clip(e, 200)}") from None
        return inputs

    async def Predict(self, request, context):
        async def call():
            size = request.ByteSize()
            if size > self.max_message_bytes:
                raise invalid(f"request of {size} bytes is over the {self.max_message_bytes} limit")
            spec, predictor = request.model_spec, self.predictor
            version, label = _version(spec), spec.version_label or None
            sig = predictor.signature(
                predictor.servable(spec.name, version, label), spec.signature_name
            )
            inputs = self._decode(request, sig)
            servable, sig, outputs = await predictor.predict(
                spec.name, version, spec.signature_name, inputs, label
            )
            wanted = list(request.output_filter) or list(outputs)
            unknown = [k for k in wanted if k not in outputs]
            if unknown:
                raise invalid(f"unknown output_filter {clip(unknown)}")
            response = predict_pb2.PredictResponse()
            response.model_spec.name = servable.name
            response.model_spec.version.value = servable.version
            response.model_spec.signature_name = sig.name
            for k in wanted:
                fill_tensor_proto(response.outputs[k], outputs[k])
            return response

        return await self._guard(context, request, call)

    async def GetModelMetadata(self, request, context):
        async def call():
            bad = [f for f in request.metadata_field if f != "signature_def"]
            if bad or not request.metadata_field:
                raise invalid("metadata_field must be ['signature_def']")
            spec = request.model_spec
            servable = self.predictor.servable(spec.name, _version(spec), spec.version_label)
            return status.metadata_response(servable)

        return await self._guard(context, request, call)

    def _check_size(self, request) -> None:
        size = request.ByteSize()
        if size > self.max_message_bytes:
            raise invalid(f"request of {size} bytes is over the {self.max_message_bytes} limit")

    async def Classify(self, request, context):
        async def call():
            self._check_size(request)
            return await inference.classify(self.predictor, request)

        return await self._guard(context, request, call)

    async def Regress(self, request, context):
        async def call():
            self._check_size(request)
            return await inference.regress(self.predictor, request)

        return await self._guard(context, request, call)

    async def MultiInference(self, request, context):
        async def call():
            self._check_size(request)
            return await inference.multi_inference(self.predictor, request)

        return await self._guard(context, request, call)


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer, _Handler):
    def __init__(self, predictor: Predictor):
        self.predictor = predictor

    async def GetModelStatus(self, request, context):
        async def call():
            spec = request.model_spec  # a version_label is not looked at, as by TF Serving
            return status.status_response(self.predictor, spec.name, _version(spec))

        return await self._guard(context, request, call)

    async def HandleReloadConfigRequest(self, request, context):
        async def call():
            raise ServingError("UNIMPLEMENTED", "dae serves one model base path")

        return await self._guard(context, request, call)


def make_server(
    predictor: Predictor,
    address: str | None,
    max_message_bytes: int,
    unix_socket: str | None = None,
    options=(),
):
    """A grpc.aio server bound to `address` (None: none) and to `unix_socket` (TF Serving's
    --grpc_socket_path; a stale socket file is replaced), with extra channel `options`
    (--grpc_channel_arguments); returns (server, bound TCP port or 0)."""
    import os
    import stat

    limit = 2 * max_message_bytes  # past our own check, gRPC itself refuses the message
    server = grpc.aio.server(
        options=[
            *options,
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
        ]
    )
    handlers = _SafeHandlers([])
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionServicer(predictor, max_message_bytes), handlers
    )
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(predictor), handlers)
    server.add_generic_rpc_handlers((handlers,))
    port = 0
    for where in filter(None, (address, unix_socket and f"unix:{unix_socket}")):
        if where.startswith("unix:"):
            try:
                if stat.S_ISSOCK(os.lstat(unix_socket).st_mode):
                    os.unlink(unix_socket)  # left by a server that was killed
            except FileNotFoundError:
                pass
        try:
            bound = server.add_insecure_port(where)
        except RuntimeError:  # grpcio raises "Failed to bind" (older versions returned 0)
            bound = 0
        if bound == 0:
            raise OSError(f"cannot bind gRPC to {where}")
        port = port or (bound if where == address else 0)
    return server, port
