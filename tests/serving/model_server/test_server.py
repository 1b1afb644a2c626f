"""`dae serve` as a client sees it: real tensorflow-serving-api stubs and plain HTTP against a
real server process, over a tiny pushed model (conftest's model_dir)."""

import threading
import time

import grpc
import numpy as np
import orjson
import pytest
import tensorflow as tf
from support import copy_version
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from dae.serving.format.export import load_servable

IMAGES = np.random.default_rng(0).random((3, 28, 28, 1)).astype(np.float32)


@pytest.fixture(scope="module")
def expected(model_dir):
    return load_servable(model_dir)(IMAGES)


def _stub(server, service=prediction_service_pb2_grpc.PredictionServiceStub):
    return service(grpc.insecure_channel(server.grpc))


def _request(images, version=None, signature="serving_default", name="images"):
    req = predict_pb2.PredictRequest()
    req.model_spec.name = "denoiser"
    req.model_spec.signature_name = signature
    if version is not None:
        req.model_spec.version.value = version
    req.inputs[name].CopyFrom(tf.make_tensor_proto(images))
    return req


def test_rest_predict_row_and_columnar(server, expected):
    row = server.http.post("/v1/models/denoiser:predict", json={"instances": IMAGES.tolist()})
    assert row.status_code == 200
    np.testing.assert_allclose(np.array(row.json()["predictions"]), expected, atol=1e-6)
    col = server.http.post(
        "/v1/models/denoiser/versions/1:predict",
        json={"signature_name": "serving_default", "inputs": {"images": IMAGES.tolist()}},
    )
    assert col.status_code == 200
    np.testing.assert_allclose(np.array(col.json()["outputs"]), expected, atol=1e-6)


def test_rest_status_and_metadata(server):
    status = server.http.get("/v1/models/denoiser").json()
    assert status == {
        "model_version_status": [
            {
                "version": "1",
                "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""},
            }
        ]
    }
    assert server.http.get("/v1/models/denoiser/versions/1").json() == status
    meta = server.http.get("/v1/models/denoiser/metadata").json()
    assert meta["model_spec"] == {"name": "denoiser", "signature_name": "", "version": "1"}
    sig = meta["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert sig["inputs"]["images"]["dtype"] == "DT_FLOAT"
    dims = [d["size"] for d in sig["inputs"]["images"]["tensor_shape"]["dim"]]
    assert dims == ["-1", "28", "28", "1"] and "denoised" in sig["outputs"]


def test_grpc_predict_metadata_and_status(server, expected):
    response = _stub(server).Predict(_request(IMAGES), timeout=30)
    assert response.model_spec.version.value == 1
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["denoised"]), expected, atol=1e-6)

    meta_req = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    meta_req.model_spec.name = "denoiser"
    meta = _stub(server).GetModelMetadata(meta_req, timeout=30)
    sigmap = get_model_metadata_pb2.SignatureDefMap()
    meta.metadata["signature_def"].Unpack(sigmap)
    assert "serving_default" in sigmap.signature_def  # beside __saved_model_init_op

    status_req = get_model_status_pb2.GetModelStatusRequest()
    status_req.model_spec.name = "denoiser"
    status = _stub(server, model_service_pb2_grpc.ModelServiceStub).GetModelStatus(status_req)
    (entry,) = status.model_version_status
    assert entry.version == 1 and entry.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE


def test_specific_versions(make_server, expected):
    server = make_server("--num-versions", "2", versions=(1, 2))
    for v in (1, 2):
        r = _stub(server).Predict(_request(IMAGES, version=v), timeout=30)
        assert r.model_spec.version.value == v
    assert _stub(server).Predict(_request(IMAGES), timeout=30).model_spec.version.value == 2
    missing = server.http.post("/v1/models/denoiser/versions/7:predict", json={"inputs": [[0]]})
    assert missing.status_code == 404 and "Specific(denoiser, 7)" in missing.json()["error"]
    with pytest.raises(grpc.RpcError) as e:
        _stub(server).Predict(_request(IMAGES, version=7), timeout=30)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    assert server.http.get("/v1/models/nosuch").status_code == 404


def test_hot_swap_under_a_stream_of_requests(make_server, model_dir):
    server = make_server()
    stop, failures, versions = threading.Event(), [], []

    def stream():
        stub = _stub(server)
        while not stop.is_set():
            try:
                versions.append(
                    stub.Predict(_request(IMAGES[:1]), timeout=30).model_spec.version.value
                )
            except grpc.RpcError as e:
                failures.append(e.code())

    threads = [threading.Thread(target=stream) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    copy_version(model_dir, server.base, 2)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not versions or versions[-1] != 2):
        time.sleep(0.1)
    time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join()
    assert failures == []
    assert versions[0] == 1 and versions[-1] == 2 and len(versions) > 20
    status = server.http.get("/v1/models/denoiser").json()["model_version_status"]
    assert [(s["version"], s["state"]) for s in status] == [("2", "AVAILABLE"), ("1", "END")]


def test_dynamic_batching_merges_concurrent_requests(make_server, tmp_path, expected):
    params = tmp_path / "batching.txt"
    params.write_text("max_batch_size { value: 32 }\nbatch_timeout_micros { value: 50000 }\n")
    server = make_server("--enable_batching", "--batching_parameters_file", str(params))
    results, barrier = {}, threading.Barrier(16)

    def one(i):
        stub = _stub(server)
        barrier.wait()
        out = stub.Predict(_request(IMAGES[i % 3 : i % 3 + 1]), timeout=30)
        results[i] = tf.make_ndarray(out.outputs["denoised"])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, out in results.items():  # each caller got its own rows back
        np.testing.assert_allclose(out[0], expected[i % 3], atol=1e-5)
    metrics = server.http.get("/monitoring/prometheus/metrics").text
    counters = dict(line.rsplit(" ", 1) for line in metrics.splitlines() if line[0] != "#")
    rows, batches = (
        int(float(counters["dae_serving_batched_rows_total"])),
        int(float(counters["dae_serving_batches_total"])),
    )
    assert rows == 16 + 0 and batches <= 4, metrics


def _ragged_same_size():
    """Two images, 29 and 27 rows: as many numbers as a [2, 28, 28, 1] batch."""
    rows = IMAGES[:2].tolist()
    rows[0].append(rows[1].pop())
    return rows


BAD_REST = [
    ({"instances": [[1.0, 2.0]]}, "has shape [1, 2], expected [N, 28, 28, 1]"),
    ({"instances": [[["a"] * 1] * 28] * 1}, "Type: String is not of expected type: float"),
    ({"inputs": {"images": [[[[True]] * 28] * 28]}}, "Type: True is not of expected type: float"),
    ({"instances": (IMAGES[:1] * 2 + 0.5).tolist()}, "outside the model's range [0, 1]"),
    ({"instances": []}, "No values in 'instances' array"),
    ({"inputs": {"pixels": IMAGES[:1].tolist()}}, "Missing named input: images in 'inputs'"),
    ({"signature_name": "encode", "instances": IMAGES[:1].tolist()}, "'encode' not found"),
    ({"instances": [[0.1], [0.1, 0.2]]}, "Expecting tensor size: 1 but got: 2"),
    ({"instances": _ragged_same_size()}, "Expecting tensor size: 812 but got: 756"),
    ({"instances": [], "inputs": []}, "expecting only one of 'inputs' or 'instances'"),
    ([1, 2, 3], "JSON Value: [1, 2, 3] Is not object"),
]


@pytest.mark.parametrize("body, message", BAD_REST)
def test_bad_rest_requests_get_400_and_the_server_stays_up(server, body, message):
    r = server.http.post("/v1/models/denoiser:predict", json=body)
    assert r.status_code == 400 and message in r.json()["error"], r.text
    assert server.alive()


def test_bad_bytes_over_rest(make_server):
    server = make_server("--max-request-bytes", "100000")
    r = server.http.post("/v1/models/denoiser:predict", content=b"{not json")
    assert r.status_code == 400 and "JSON Parse error" in r.json()["error"]
    big = orjson.dumps({"instances": np.zeros((40, 28, 28, 1)).tolist()})
    assert len(big) > 100_000
    r = server.http.post("/v1/models/denoiser:predict", content=big)
    assert r.status_code == 400 and "limit" in r.json()["error"]
    r = server.http.post("/v1/models/denoiser/versions/x:predict", content=b"{}")
    assert r.status_code == 400
    assert server.alive()


BAD_GRPC = [
    (lambda: _request(np.zeros((1, 2), np.float32)), "expected [N, 28, 28, 1]"),
    (lambda: _request(np.array([[b"x"]])), "non-numeric"),
    (lambda: _request(np.zeros((0, 28, 28, 1), np.float32)), "empty batch"),
    (lambda: _request(np.full((1, 28, 28, 1), np.nan, np.float32)), "NaN"),
    (lambda: _request(IMAGES, name="pixels"), "unknown input 'pixels'"),
    (lambda: _request(IMAGES, signature="decode"), "'decode' not found"),
]


@pytest.mark.parametrize("make_request, message", BAD_GRPC)
def test_bad_grpc_requests_get_invalid_argument(server, make_request, message):
    with pytest.raises(grpc.RpcError) as e:
        _stub(server).Predict(make_request(), timeout=30)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in e.value.details()
    assert _stub(server).Predict(_request(IMAGES), timeout=30).outputs["denoised"]


def test_serve_refuses_bad_flags(tmp_path, capsys):
    from dae.cli import main

    assert main(["serve", "--model-base-path", str(tmp_path / "nope")]) == 1
    assert "does not exist" in capsys.readouterr().err
    params = tmp_path / "b.txt"
    params.write_text("max_batch_size { value: -1 }")
    argv = [
        "serve",
        "--model-base-path",
        str(tmp_path),
        "--enable-batching",
        "--batching-parameters-file",
        str(params),
    ]
    assert main(argv) == 1
    assert "max_batch_size must be positive" in capsys.readouterr().err


def test_serve_names_a_grpc_port_it_cannot_bind(model_dir):
    """grpcio raises where older versions returned port 0: still one line, not a traceback."""
    import socket

    from support import dae, free_port

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = dae(
            "serve",
            "--model-base-path",
            str(model_dir.parent),
            "--port",
            str(port),
            "--rest-api-port",
            str(free_port()),
            check=False,
            timeout=120,
        )
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    # Every address (TF Serving's default) includes the loopback one taken above.
    assert last.startswith(f"dae: error: cannot bind gRPC to 0.0.0.0:{port} (in use")
    assert "Traceback" not in proc.stderr
