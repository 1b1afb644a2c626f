"""Clients for a TF Serving endpoint (the real tensorflow/serving or `dae serve`): gRPC with
tensorflow-serving-api's stubs, REST with http.client (predict) and httpx. Both return
numpy arrays."""

from __future__ import annotations

import socket

import numpy as np

from dae.serving.format.export import INPUT_NAME, OUTPUT_NAME, SIGNATURE


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
            options=[
                ("grpc.max_send_message_length", limit),
                ("grpc.max_receive_message_length", limit),
            ],
        )
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

        try:
            response = self.stub.Predict(self.request(images, version), timeout=self.timeout)
        except grpc.RpcError as e:
            raise ServingClientError(e.code().name, e.details()) from None
        from dae.serving.apis.tensor_proto import to_ndarray

        return to_ndarray(response.outputs[OUTPUT_NAME])

    def close(self) -> None:
        self.channel.close()


class RestClient:
    def __init__(self, base_url: str, model: str, timeout: float = 30.0):
        import http.client
        import urllib.parse

        import httpx

        if "://" not in base_url:
            base_url = f"http://{base_url}"
        # Without TCP_NODELAY a body sent after its headers waits out a delayed ACK.
        nodelay = httpx.HTTPTransport(socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
        self.http = httpx.Client(base_url=base_url, timeout=timeout, transport=nodelay)
        # Predict goes through http.client: httpx reads a body in 64 KiB pieces through h11 and
        # joins them twice (see the README's serving figures).
        url = urllib.parse.urlsplit(base_url)
        conn = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
        self._conn = conn(url.hostname, url.port, timeout=timeout)
        self._prefix = url.path.rstrip("/")
        self.model = model

    def _post(self, path: str, body: bytes) -> tuple[int, bytes]:
        import http.client

        reused = self._conn.sock is not None
        try:
            return self._send(path, body)
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            if not reused:
                raise
        # the server closed an idle keep-alive connection: once more, on a new one
        return self._send(path, body)

    def _send(self, path: str, body: bytes) -> tuple[int, bytes]:
        try:
            if self._conn.sock is None:
                self._conn.connect()
                self._conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._conn.request(
                "POST", self._prefix + path, body, {"content-type": "application/json"}
            )
            r = self._conn.getresponse()
            return r.status, r.read()
        except BaseException:
            self._conn.close()
            raise

    def predict(self, images: np.ndarray, version: int | None = None) -> np.ndarray:
        import orjson

        from dae.serving.apis import json_parse, json_tensor

        path = f"/v1/models/{self.model}" + (f"/versions/{version}" if version is not None else "")
        body = b'{"inputs":' + json_tensor.dumps(np.asarray(images, np.float32)) + b"}"
        status, content = self._post(f"{path}:predict", body)
        fast = json_tensor.loads(content, ("outputs",)) if status == 200 else None
        if fast:
            return fast[1].astype(np.float32)
        if status != 200:  # TF Serving's {"error": ...}, or a proxy's page
            try:
                message = orjson.loads(content)["error"]
            except (orjson.JSONDecodeError, KeyError, TypeError):
                message = content.decode("utf-8", "replace").strip()[:500]
            raise ServingClientError(str(status), message)
        # NaN / Infinity as TF Serving writes them: orjson and simdjson refuse those tokens.
        return np.asarray(json_parse.parse(content)["outputs"], np.float32)

    def close(self) -> None:
        self._conn.close()
        self.http.close()


def connect(server: str, model: str, rest: bool = False):
    """`host:port` of the gRPC (default) or REST endpoint."""
    return RestClient(server, model) if rest else GrpcClient(server, model)
