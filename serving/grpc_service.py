"""TF Serving's gRPC services on grpc.aio, with tensorflow-serving-api's generated stubs:
PredictionService (Predict, GetModelMetadata) and ModelService (GetModelStatus)."""

from __future__ import annotations

import logging
import math
import sys
import time

import grpc
import numpy as np
from tensorflow_serving.apis import (
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from dae.serving import status
from dae.serving.predict import Predictor
from dae.serving.servable import ServingError

log = logging.getLogger("dae.serving.grpc")


def _numpy_dtypes() -> dict[int, np.dtype]:
    from tensorflow.core.framework import types_pb2 as t

    return {t.DT_FLOAT: np.dtype("<f4"), t.DT_DOUBLE: np.dtype("<f8"), t.DT_HALF: np.dtype("<f2"),
            t.DT_INT8: np.dtype("i1"), t.DT_INT16: np.dtype("<i2"), t.DT_INT32: np.dtype("<i4"),
            t.DT_INT64: np.dtype("<i8"), t.DT_UINT8: np.dtype("u1"), t.DT_UINT16: np.dtype("<u2"),
            t.DT_UINT32: np.dtype("<u4"), t.DT_UINT64: np.dtype("<u8")}  # fmt: skip


_DTYPES = _numpy_dtypes() if sys.byteorder == "little" else {}
# tf.make_tensor_proto sends uint16 as int_val, not tensor_content: that one is left to it.
_ENUMS = {v: k for k, v in _DTYPES.items() if v != np.dtype("<u2")}


def to_ndarray(proto) -> np.ndarray:
    """tf.make_ndarray, without its ~10 us of Python for the common case: a numeric tensor
    packed in tensor_content (what tf.make_tensor_proto and TF Serving clients send). Anything
    else, or content that does not match the shape, goes through tf.make_ndarray (its errors)."""
    dtype = _DTYPES.get(proto.dtype)
    if dtype is not None and proto.tensor_content:
        dims = [d.size for d in proto.tensor_shape.dim]
        size = dtype.itemsize * math.prod(dims)
        if all(d >= 0 for d in dims) and len(proto.tensor_content) == size:
            return np.frombuffer(proto.tensor_content, dtype).reshape(dims)
    import tensorflow as tf

    return tf.make_ndarray(proto)


def fill_tensor_proto(proto, value: np.ndarray) -> None:
    """tf.make_tensor_proto(value) written into `proto` in place, the same bytes for what
    it packs into tensor_content (numeric arrays of rank >= 1): ~4 us instead of ~23 us."""
    enum = _ENUMS.get(value.dtype) if value.ndim else None
    if enum is None:
        import tensorflow as tf

        proto.CopyFrom(tf.make_tensor_proto(value))
        return
    proto.dtype = enum
    dims = proto.tensor_shape.dim
    for d in value.shape:
        dims.add().size = d
    proto.tensor_content = value.tobytes()  # C order, as make_tensor_proto


def _abort_code(code: str) -> grpc.StatusCode:
    return getattr(grpc.StatusCode, code, grpc.StatusCode.INTERNAL)


def _version(spec) -> int | None:
    return spec.version.value if spec.HasField("version") else None


class _Handler:
    async def _guard(self, context, call):
        start = time.perf_counter()
        try:
            response = await call()
            if log.isEnabledFor(logging.DEBUG):
                log.debug("gRPC %s OK %.1f ms", call.__qualname__.split(".")[1],
                          (time.perf_counter() - start) * 1e3)  # fmt: skip
            return response
        except ServingError as e:
            log.debug("gRPC %s %s: %s", call.__qualname__.split(".")[1], e.code, e)
            await context.abort(_abort_code(e.code), str(e))
        except Exception as e:  # a bug of ours: INTERNAL, and the server keeps answering
            log.exception("internal error")
            await context.abort(grpc.StatusCode.INTERNAL, f"{type(e).__name__}: {e}")


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer, _Handler):
    def __init__(self, predictor: Predictor, max_message_bytes: int):
        self.predictor = predictor
        self.max_message_bytes = max_message_bytes

    async def Predict(self, request, context):
        async def call():
            size = request.ByteSize()
            if size > self.max_message_bytes:
                raise ServingError(
                    "INVALID_ARGUMENT",
                    f"request of {size} bytes is over the {self.max_message_bytes} limit",
                )
            inputs = {}
            for name, proto in request.inputs.items():
                try:
                    inputs[name] = to_ndarray(proto)
                except Exception as e:
                    raise ServingError("INVALID_ARGUMENT", f"input '{name}': {e}") from None
            spec = request.model_spec
            servable, sig, outputs = await self.predictor.predict(
                spec.name, _version(spec), spec.signature_name, inputs
            )
            wanted = list(request.output_filter) or list(outputs)
            unknown = [k for k in wanted if k not in outputs]
            if unknown:
                raise ServingError("INVALID_ARGUMENT", f"unknown output_filter {unknown}")
            response = predict_pb2.PredictResponse()
            response.model_spec.name = servable.name
            response.model_spec.version.value = servable.version
            response.model_spec.signature_name = sig.name
            for k in wanted:
                fill_tensor_proto(response.outputs[k], outputs[k])
            return response

        return await self._guard(context, call)

    async def GetModelMetadata(self, request, context):
        async def call():
            bad = [f for f in request.metadata_field if f != "signature_def"]
            if bad or not request.metadata_field:
                raise ServingError("INVALID_ARGUMENT", "metadata_field must be ['signature_def']")
            spec = request.model_spec
            return status.metadata_response(self.predictor.servable(spec.name, _version(spec)))

        return await self._guard(context, call)


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer, _Handler):
    def __init__(self, predictor: Predictor):
        self.predictor = predictor

    async def GetModelStatus(self, request, context):
        async def call():
            spec = request.model_spec
            return status.status_response(self.predictor, spec.name, _version(spec))

        return await self._guard(context, call)

    async def HandleReloadConfigRequest(self, request, context):
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "dae serves one model base path")


def make_server(predictor: Predictor, address: str, max_message_bytes: int):
    """A grpc.aio server bound to `address`; returns (server, bound port)."""
    limit = 2 * max_message_bytes  # past our own check, gRPC itself refuses the message
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
        ]  # fmt: skip
    )
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionServicer(predictor, max_message_bytes), server
    )
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(predictor), server)
    try:
        port = server.add_insecure_port(address)
    except RuntimeError:  # grpcio raises "Failed to bind" (older versions returned 0)
        port = 0
    if port == 0:
        raise OSError(f"cannot bind gRPC to {address}")
    return server, port
