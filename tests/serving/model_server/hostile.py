"""What an unfriendly network sends to `dae serve`: raw HTTP over a socket, gRPC bytes no
stub would send, and hypothesis strategies for fuzzing both front ends. Traffic goes only
to the 127.0.0.1 server a test started."""

from __future__ import annotations

import socket
import threading
import time
import urllib.parse
from pathlib import Path

import grpc
import numpy as np
import orjson
import tensorflow as tf
from hypothesis import strategies as st
from tensorflow.core.framework import tensor_pb2
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

PREDICT = "/v1/models/denoiser:predict"
IMAGE = np.full((1, 28, 28, 1), 0.5, np.float32)
GOOD_BODY = b'{"instances": ' + orjson.dumps(IMAGE.tolist()) + b"}"


def raw_http(address: str, data: bytes, timeout: float = 10.0, half_close=False) -> bytes:
    """Send bytes on a fresh connection; everything the server answers until it closes
    (or `timeout` passes without a byte)."""
    host, port = address.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(data)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        chunks = []
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
        except TimeoutError:
            pass
        return b"".join(chunks)


def responses(raw: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Split HTTP/1.1 responses read off one connection: (status, headers, body)."""
    out = []
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
        if "content-length" in headers:
            n = int(headers["content-length"])
            body, raw = rest[:n], rest[n:]
        elif headers.get("transfer-encoding") == "chunked":
            body = b""
            while True:
                size, _, rest = rest.partition(b"\r\n")
                n = int(size, 16)
                body, rest = body + rest[:n], rest[n + 2 :]
                if n == 0:
                    break
            raw = rest
        else:
            body, raw = rest, b""
        out.append((status, headers, body))
    return out


def post(path: str, body: bytes, extra: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{extra}"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def grpc_raw(target: str, payload: bytes, method="/tensorflow.serving.PredictionService/Predict"):
    """A unary call whose request bytes are `payload`, whatever they are."""
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        return call(payload, timeout=30)


def stub(server):
    return prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(server.grpc))


def request(images=IMAGE, name="images") -> predict_pb2.PredictRequest:
    req = predict_pb2.PredictRequest()
    req.model_spec.name = "denoiser"
    req.inputs[name].CopyFrom(tf.make_tensor_proto(images))
    return req


def still_serving(server) -> None:
    """A valid predict answers, over REST and gRPC."""
    assert server.http.post(PREDICT, content=GOOD_BODY).status_code == 200
    assert stub(server).Predict(request(), timeout=30).outputs["denoised"]


def status(server) -> dict[int, tuple[str, str]]:
    """{version: (state, error message)} as the server reports them."""
    entries = server.http.get("/v1/models/denoiser").json()["model_version_status"]
    return {int(e["version"]): (e["state"], e["status"]["error_message"]) for e in entries}


def wait(condition, seconds=60.0, what="condition"):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if result := condition():
            return result
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) / 1024


class Stream:
    """Clients predicting in a loop over REST while a test changes the served versions:
    every answer is recorded, failures with the phase they happened in."""

    def __init__(self, rest: str, clients: int = 2):
        import httpx

        self.phase, self.failures, self.versions = "start", [], []
        self._stop = threading.Event()
        self._http = [httpx.Client(base_url=rest, timeout=30) for _ in range(clients)]
        self._threads = [threading.Thread(target=self._run, args=(h,)) for h in self._http]
        for t in self._threads:
            t.start()

    def _run(self, http) -> None:
        while not self._stop.is_set():
            r = http.post(PREDICT, content=GOOD_BODY)
            if r.status_code != 200:
                self.failures.append((self.phase, r.status_code, r.text[:200]))
            else:
                self.versions.append(self.phase)
            time.sleep(0.01)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()
        for h in self._http:
            h.close()


# ---- hypothesis strategies ---------------------------------------------------------------

_text = st.text(max_size=12)
_numbers = st.one_of(
    st.floats(0, 1), st.floats(allow_nan=False), st.integers(-(2**63), 2**63 - 1), st.booleans()
)
_json = st.recursive(
    st.one_of(st.none(), _numbers, _text),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(_text, inner, max_size=3)),
    max_leaves=20,
)


@st.composite
def tensors(draw):
    """Arrays near the model's [N, 28, 28, 1] (wrong sizes, ranks, values), as lists, or
    deeply nested ones, or any JSON."""
    kind = draw(st.sampled_from(["image", "image", "image", "shape", "deep", "json"]))
    if kind == "json":
        return draw(_json)
    if kind == "deep":
        value = draw(st.one_of(st.floats(0, 1), st.booleans(), st.none()))
        for _ in range(draw(st.integers(1, 200))):
            value = [value]
        return value
    if kind == "shape":
        shape = draw(st.lists(st.integers(0, 4), min_size=0, max_size=5))
    else:
        shape = [draw(st.integers(0, 3)), 28, 28, 1]
    rows = np.full(shape, draw(st.one_of(st.floats(0, 1), st.floats(-1, 2))), np.float64).tolist()
    if draw(st.integers(0, 2)) == 0 and shape and shape[0]:  # one odd value inside
        rows[0] = draw(st.one_of(st.booleans(), st.none(), _text, st.just([]), st.floats()))
    return rows


@st.composite
def rest_requests(draw) -> tuple[str, str, dict[str, str], bytes]:
    """(method, path, headers, body)."""
    method = draw(st.sampled_from(["POST"] * 5 + ["GET", "PUT", "DELETE", "PATCH", "OPTIONS"]))
    name = draw(st.sampled_from(["denoiser", "denoiser", "DENOISER", "x"]) | st.text(min_size=1))
    version = draw(
        st.one_of(
            st.just(""),
            st.just(""),
            st.just(""),
            st.integers(-5, 2**70).map(lambda v: f"/versions/{v}"),
            st.text(min_size=1, max_size=6).map(lambda v: f"/versions/{v}"),
            st.sampled_from(["/versions/\u00b2", "/versions/\u0661", "/versions/1" + "0" * 400]),
            st.text(min_size=1, max_size=6).map(lambda v: f"/labels/{v}"),
        )
    )
    verb = draw(st.sampled_from([":predict"] * 4 + ["/metadata", "", ":classify", ":x"]))
    path = urllib.parse.quote(f"/v1/models/{name}{version}{verb}", safe="/:")
    path = draw(st.sampled_from([path] * 5 + ["/", "/v1", path + "/extra"]))
    body_kind = draw(st.sampled_from(["tensor", "tensor", "columnar", "json", "bytes", "text"]))
    if body_kind == "bytes":
        body = draw(st.binary(max_size=200))
    elif body_kind == "text":  # what orjson cannot write: huge numbers, NaN, deep nesting
        number = draw(st.sampled_from(["1" + "0" * 30, "1e400", "NaN", "-0", "1e-400", "0x1"]))
        depth = draw(st.integers(1, 1100))
        body = b'{"instances": ' + b"[" * depth + number.encode() + b"]" * depth + b"}"
    elif body_kind == "json":
        body = orjson.dumps(draw(_json))
    else:
        key = "instances" if body_kind == "tensor" else "inputs"
        obj = {key: draw(tensors())}
        if draw(st.booleans()):
            obj["signature_name"] = draw(st.one_of(_json, st.just("serving_default")))
        if body_kind == "columnar" and draw(st.booleans()):
            obj = {"inputs": {draw(st.sampled_from(["images", "x"])): obj["inputs"]}}
        body = orjson.dumps(obj)
    headers = {"Content-Type": draw(st.sampled_from(["application/json", "text/plain", "x/y"]))}
    if draw(st.integers(0, 4)) == 0:
        import gzip

        headers["Content-Encoding"] = "gzip"
        body = draw(st.sampled_from([gzip.compress(body), body]))
    return method, path, headers, body


_DIMS = st.sampled_from([-1, 0, 1, 2, 3, 28, 784, 8192, 2**31, 2**62])


@st.composite
def grpc_requests(draw) -> predict_pb2.PredictRequest:
    req = predict_pb2.PredictRequest()
    req.model_spec.name = draw(st.sampled_from(["denoiser", "denoiser", "other", ""]))
    choice = draw(st.sampled_from(["none", "none", "version", "label"]))
    if choice == "version":
        req.model_spec.version.value = draw(st.integers(-(2**63), 2**63 - 1))
    elif choice == "label":
        req.model_spec.version_label = draw(_text)
    req.model_spec.signature_name = draw(st.sampled_from(["", "serving_default", "decode", "x"]))
    for _ in range(draw(st.integers(0, 2))):
        name = draw(st.sampled_from(["images", "images", "z", "x" * 10_000]))
        proto = tensor_pb2.TensorProto(dtype=draw(st.integers(0, 30)))
        shape = draw(st.one_of(st.just([1, 28, 28, 1]), st.lists(_DIMS, max_size=6)))
        for d in shape:
            proto.tensor_shape.dim.add().size = d
        proto.tensor_shape.unknown_rank = draw(st.integers(0, 9)) == 0
        content = draw(st.sampled_from(["float_val", "tensor_content", "int_val", "string_val"]))
        if content == "tensor_content":
            size = draw(st.sampled_from([0, 3, 3136, 4 * 784]))
            proto.tensor_content = draw(st.binary(min_size=size, max_size=size))
        elif content == "float_val":
            proto.float_val.extend(draw(st.lists(st.floats(width=32), max_size=8)))
        elif content == "int_val":
            proto.int_val.extend(draw(st.lists(st.integers(-(2**31), 2**31 - 1), max_size=8)))
        else:
            proto.string_val.extend(draw(st.lists(st.binary(max_size=8), max_size=4)))
        req.inputs[name].CopyFrom(proto)
    req.output_filter.extend(draw(st.lists(st.sampled_from(["denoised", "x"]), max_size=2)))
    return req
