"""Clients for a TF Serving endpoint (the real tensorflow/serving or `dae serve`): gRPC with
tensorflow-serving-api's stubs, REST with httpx. Both return numpy arrays."""

from __future__ import annotations

import socket

import numpy as np

from serving.export import INPUT_NAME, OUTPUT_NAME, SIGNATURE


class ServingClientError(RuntimeError):
    """The server refused a request; the message is the server's."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code


class GrpcClient:
    def __init__(self, target: str, model: str, timeout: float = 30.0, max_mb: int = 256):
        import grpc
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        limit = max_mb * 1024 * 1024
        self.channel = grpc.insecure_channel(
            target,
            options=[("grpc.max_send_message_length", limit),
                     ("grpc.max_receive_message_length", limit)],
        )  # fmt: skip
        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.model, self.timeout = model, timeout

    def request(self, images: np.ndarray, version: int | None = None, signature=SIGNATURE):
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        req = predict_pb2.PredictRequest()
        req.model_spec.name = self.model
        req.model_spec.signature_name = signature
        if version is not None:
            req.model_spec.version.value = version
        req.inputs[INPUT_NAME].CopyFrom(tf.make_tensor_proto(np.asarray(images, np.float32)))
        return req

    def predict(self, images: np.ndarray, version: int | None = None) -> np.ndarray:
        import grpc
        import tensorflow as tf

        try:
            response = self.stub.Predict(self.request(images, version), timeout=self.timeout)
        except grpc.RpcError as e:
            raise ServingClientError(e.code().name, e.details()) from None
        return tf.make_ndarray(response.outputs[OUTPUT_NAME])

    def close(self) -> None:
        self.channel.close()


class RestClient:
    def __init__(self, base_url: str, model: str, timeout: float = 30.0):
        import httpx

        if "://" not in base_url:
            base_url = f"http://{base_url}"
        # Without TCP_NODELAY a body sent after its headers waits out a delayed ACK (~40 ms+).
        nodelay = httpx.HTTPTransport(socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
        self.http = httpx.Client(base_url=base_url, timeout=timeout, transport=nodelay)
        self.model = model

    def predict(self, images: np.ndarray, version: int | None = None) -> np.ndarray:
        import orjson

        from serving import json_tensor

        path = f"/v1/models/{self.model}" + (f"/versions/{version}" if version else "")
        body = b'{"inputs":' + json_tensor.dumps(np.asarray(images, np.float32)) + b"}"
        r = self.http.post(f"{path}:predict", content=body,
                           headers={"content-type": "application/json"})  # fmt: skip
        fast = json_tensor.loads(r.content, ("outputs",)) if r.status_code == 200 else None
        if fast:
            return fast[1].astype(np.float32)
        data = orjson.loads(r.content)
        if r.status_code != 200:
            raise ServingClientError(str(r.status_code), data.get("error", r.text))
        return np.asarray(data["outputs"], np.float32)

    def close(self) -> None:
        self.http.close()


def connect(server: str, model: str, rest: bool = False):
    """`host:port` of the gRPC (default) or REST endpoint."""
    return RestClient(server, model) if rest else GrpcClient(server, model)
