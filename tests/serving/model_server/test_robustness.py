"""`dae serve` under attack (issue 15): REST and gRPC fuzzing with hypothesis, then one
regression test per defect found (D1-D7). Fuzz counts are printed (`pytest -s`)."""

from __future__ import annotations

import gzip
import os
import socket
import time
from collections import Counter

import grpc
import numpy as np
import orjson
import pytest
import tensorflow as tf
from hostile import (
    GOOD_BODY,
    IMAGE,
    PREDICT,
    grpc_raw,
    grpc_requests,
    post,
    raw_http,
    request,
    responses,
    rest_requests,
    still_serving,
    stub,
    wait,
)
from hypothesis import HealthCheck, given, settings
from support import Server, copy_version
from tensorflow_serving.apis import predict_pb2

FUZZ = settings(
    max_examples=500, deadline=None, database=None, suppress_health_check=list(HealthCheck)
)


@pytest.fixture(scope="module")
def limited(tmp_path_factory, model_dir):
    """A server with small limits: 200 KB bodies, batches of 4 rows, 3 queued batches."""
    base = tmp_path_factory.mktemp("limited") / "denoiser"
    base.mkdir()
    copy_version(model_dir, base, 1)
    params = base.parent / "batching.txt"
    params.write_text("max_batch_size { value: 4 }\nmax_enqueued_batches { value: 3 }\n")
    server = Server(
        base,
        "--max-request-bytes",
        "200000",
        "--enable-batching",
        "--batching-parameters-file",
        str(params),
    )
    yield server
    server.stop()


# ---- fuzzing ------------------------------------------------------------------------------


def test_fuzz_rest(server):
    sent: Counter[int] = Counter()

    @FUZZ
    @given(rest_requests())
    def one(request):
        method, path, headers, body = request
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        data = f"{method} {path} HTTP/1.1\r\nHost: x\r\n{head}Content-Length: {len(body)}\r\n"
        raw = raw_http(server.rest, data.encode() + b"Connection: close\r\n\r\n" + body)
        ((status, _, content),) = responses(raw)
        sent[status] += 1
        assert status < 500, (request, content[:300])
        if status >= 400:
            assert isinstance(orjson.loads(content)["error"], str), content[:300]
        if len(sent) and sum(sent.values()) % 50 == 0:
            still_serving(server)

    one()
    print(
        f"\nREST fuzz: {sum(sent.values())} requests sent, by status: {dict(sorted(sent.items()))}"
    )
    still_serving(server)


def test_fuzz_grpc(server):
    sent: Counter[str] = Counter()
    predict = stub(server).Predict

    @FUZZ
    @given(grpc_requests())
    def one(request):
        try:
            predict(request, timeout=30)
            code = grpc.StatusCode.OK
        except grpc.RpcError as e:
            code = e.code()
            assert len(e.details()) < 1000, e.details()[:200]
        sent[code.name] += 1
        assert code not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL), request
        assert code != grpc.StatusCode.RESOURCE_EXHAUSTED, request

    one()
    for payload in (os.urandom(n) for n in range(1, 101)):  # bytes no stub would send
        try:
            grpc_raw(server.grpc, payload)
            sent["OK"] += 1
        except grpc.RpcError as e:
            sent[e.code().name] += 1
            assert e.code() not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL)
    print(f"\ngRPC fuzz: {sum(sent.values())} requests sent, by code: {dict(sorted(sent.items()))}")
    still_serving(server)


# ---- D2: client mistakes are 400s -------------------------------------------------------------


def _nested(depth):
    value = 0.5
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    "path, body, message",
    [
        (
            PREDICT,
            {"signature_name": ["a"], "instances": IMAGE.tolist()},
            "'signature_name' key must be a string value",
        ),
        ("/v1/models/denoiser/versions/%C2%B2:predict", None, "Malformed request"),
        ("/v1/models/denoiser/versions/%D9%A1:predict", None, "Malformed request"),
        ("/v1/models/denoiser/versions/%EF%BC%91:predict", None, "Malformed request"),
        ("/v1/models/denoiser/versions/" + "7" * 5000 + ":predict", None, "to numeric"),
        (PREDICT, {"instances": _nested(65)}, "65"),
        (PREDICT, b'{"instances": ' + b"[" * 1000 + b"0.5" + b"]" * 1000 + b"}", "deep"),
    ],
    ids=[
        "signature list",
        "superscript",
        "arabic-indic",
        "fullwidth",
        "5000 digits",
        "65 deep",
        "1000 deep",
    ],
)
def test_d2_client_mistakes_are_400_naming_them(server, path, body, message):
    content = GOOD_BODY if body is None else body if isinstance(body, bytes) else orjson.dumps(body)
    r = server.http.post(path, content=content)
    assert r.status_code == 400 and message in r.json()["error"], r.text[:300]
    assert len(r.json()["error"]) < 400


def test_d2_every_answered_request_is_counted_by_its_code(server):
    def counts():
        text = server.http.get("/monitoring/prometheus/metrics").text
        return Counter(
            {
                line.split('status="')[1].split('"')[0]: int(float(line.rsplit(" ", 1)[1]))
                for line in text.splitlines()
                if line.startswith("dae_serving_request_count")
            }
        )

    before = counts()
    server.http.post(PREDICT, content=GOOD_BODY)  # OK
    server.http.get("/v1/models/denoiser")  # OK
    server.http.post(PREDICT, content=b"{not json")  # INVALID_ARGUMENT
    server.http.post(PREDICT, json={"signature_name": ["a"], "instances": [1]})  # INVALID_ARGUMENT
    server.http.post("/v1/models/nosuch:predict", content=GOOD_BODY)  # NOT_FOUND
    with pytest.raises(grpc.RpcError):
        stub(server).Predict(request(name="pixels"), timeout=30)  # INVALID_ARGUMENT
    delta = counts() - before
    assert delta == Counter(OK=2, INVALID_ARGUMENT=3, NOT_FOUND=1), delta


# ---- D3: bounded work and memory ----------------------------------------------------------------


def test_d3_a_short_float_val_cannot_ask_for_thousands_of_rows(server):
    req = predict_pb2.PredictRequest()
    req.model_spec.name = "denoiser"
    tensor = req.inputs["images"]
    tensor.dtype = tf.float32.as_datatype_enum
    for d in (8192, 28, 28, 1):
        tensor.tensor_shape.dim.add().size = d
    tensor.float_val.append(0.5)
    assert req.ByteSize() < 70
    with pytest.raises(grpc.RpcError) as e:
        stub(server).Predict(req, timeout=30)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "8192 rows" in e.value.details() and "--max-request-rows" in e.value.details()


def test_d3_a_chunked_body_is_refused_as_it_arrives(limited):
    """No Content-Length: the limit must be counted while the body arrives, not after."""
    host, port = limited.rest.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(
            f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
        )
        chunk = b"[" * 65536
        for _ in range(5):  # 320 KB of a body that never ends
            s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        s.settimeout(10)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    ((status, _, body),) = responses(answer)
    assert status == 400 and "200000" in orjson.loads(body)["error"]


# ---- D4: a request the batch queue can never hold ---------------------------------------------


def test_d4_a_request_over_the_batch_queue_is_refused_up_front(limited):
    with pytest.raises(grpc.RpcError) as e:  # 13 rows: 4 batches of 4, the queue holds 3
        stub(limited).Predict(request(np.full((13, 28, 28, 1), 0.5, np.float32)), timeout=30)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "max_enqueued_batches" in e.value.details()
    metrics = limited.http.get("/monitoring/prometheus/metrics").text
    assert "dae_serving_batched_rows_total 0" in metrics  # nothing was computed
    ok = stub(limited).Predict(request(np.full((12, 28, 28, 1), 0.5, np.float32)), timeout=30)
    assert tf.make_ndarray(ok.outputs["denoised"]).shape == (12, 28, 28, 1)


# ---- D5: input that was accepted silently -------------------------------------------------------


def test_d5_a_json_boolean_in_a_float_tensor_is_refused(server):
    rows = IMAGE.tolist()
    rows[0][3][4][0] = True
    for body in ({"instances": rows}, {"inputs": {"images": rows}}):
        r = server.http.post(PREDICT, json=body)
        assert r.status_code == 400 and "true" in r.json()["error"], r.text[:300]


def test_d5_negative_dims_are_refused(server):
    req = request()
    req.inputs["images"].tensor_shape.dim[0].size = -1
    with pytest.raises(grpc.RpcError) as e:
        stub(server).Predict(req, timeout=30)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "-1" in e.value.details()


def test_d5_version_labels_are_unrecognized(server):
    req = request()
    req.model_spec.version_label = "stable"
    with pytest.raises(grpc.RpcError) as e:
        stub(server).Predict(req, timeout=30)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.details() == "Unrecognized servable version label: stable"
    r = server.http.post("/v1/models/denoiser/labels/stable:predict", content=GOOD_BODY)
    assert r.status_code == 400
    assert r.json() == {"error": "Unrecognized servable version label: stable"}


# ---- D6: protocol hygiene ----------------------------------------------------------------

NOT_HTTP = [
    b"GARBAGE\r\n\r\n",
    b"GET * HTTP/1.1\r\nHost: x\r\n\r\n",
    b"PATCH /v1/models/denoiser HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    b"OPTIONS /v1/models/denoiser HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    b"GET /v1/models/denoiser HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    b"GET /v1/models/d\xc3\xa9noiser\xff HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n",
    post(PREDICT, b"{}", "Transfer-Encoding: chunked\r\n"),
]


@pytest.mark.parametrize("data", NOT_HTTP, ids=range(len(NOT_HTTP)))
def test_d6_every_rest_error_body_is_json(server, data):
    ((status, headers, body), *_) = responses(raw_http(server.rest, data, half_close=True))
    assert 400 <= status < 500 and headers["content-type"] == "application/json", body
    assert isinstance(orjson.loads(body)["error"], str)


def test_d6_pipelined_requests_each_get_their_own_answer(server):
    raw = raw_http(server.rest, post(PREDICT, GOOD_BODY) + b"NOT HTTP AT ALL\r\n\r\n")
    (first, second) = responses(raw)
    assert first[0] == 200 and "predictions" in orjson.loads(first[2])
    assert second[0] == 400 and "error" in orjson.loads(second[2])


def test_d6_idle_and_slow_connections_are_closed_and_capped(make_server):
    server = make_server("--rest-header-timeout-seconds", "1", "--rest-max-connections", "4")
    host, port = server.rest.removeprefix("http://").split(":")
    idle = [socket.create_connection((host, int(port)), timeout=5) for _ in range(4)]
    time.sleep(0.2)
    over = raw_http(server.rest, post(PREDICT, GOOD_BODY, "Connection: close\r\n"), timeout=5)
    ((status, _, _),) = responses(over)
    assert status == 200  # the oldest idle connection made room (test_robustness_connections)
    assert idle.pop(0).recv(65536) == b""
    slow = idle.pop()
    start = time.monotonic()
    for byte in b"POST /v1/models/denoiser:predict HTTP/1.1\r\n":  # one byte every 0.1 s
        try:
            slow.send(bytes([byte]))
        except OSError:
            break
        time.sleep(0.1)
    for s in [*idle, slow]:
        s.settimeout(5)
        assert responses(s.recv(65536))[0][0] == 408  # closed at the header timeout
        s.close()
    assert time.monotonic() - start < 4
    assert server.http.post(PREDICT, content=GOOD_BODY).status_code == 200


def test_d6_a_client_gone_mid_body_is_a_disconnect_not_an_error(server):
    host, port = server.rest.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(post(PREDICT, GOOD_BODY)[:-1000])
    wait(lambda: "disconnected" in server.log.read_text(), seconds=10, what="the log line")
    text = server.log.read_text()
    assert "internal error" not in text and "Traceback" not in text


def test_d6_undecodable_grpc_bytes_are_invalid_argument(server):
    for payload in (b"\xff" * 10, b"\x0a\x05ab", b"\x12\xff\xff\xff\xff\x0f"):
        with pytest.raises(grpc.RpcError) as e:
            grpc_raw(server.grpc, payload)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value
    assert "Traceback" not in server.log.read_text()


def test_d6_echoed_input_is_truncated(server):
    with pytest.raises(grpc.RpcError) as e:
        stub(server).Predict(request(name="x" * 10_000), timeout=30)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "unknown input 'xxxx" in e.value.details() and len(e.value.details()) < 500
    r = server.http.post("/v1/models/" + "m" * 10_000 + ":predict", content=GOOD_BODY)
    assert r.status_code == 404 and len(r.json()["error"]) < 500


def test_d6_gzip_bodies_are_accepted(server):
    r = server.http.post(
        PREDICT, content=gzip.compress(GOOD_BODY), headers={"Content-Encoding": "gzip"}
    )
    assert r.status_code == 200 and len(r.json()["predictions"]) == 1
    r = server.http.post(PREDICT, content=b"not gzip", headers={"Content-Encoding": "gzip"})
    assert r.status_code == 400 and "gzip" in r.json()["error"]
