"""The base's helpers (test_util/tensorflow_model_server_test_base.py): gRPC and REST calls,
the request builders and checks the tests share."""

from __future__ import annotations

import json
import time

import grpc
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from tfs_models import DEFAULT_SIGNATURE
from tfs_servers import RPC_TIMEOUT, ModelServer


def prediction_call(address: str, method: str, request):
    with grpc.insecure_channel(address) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        return getattr(stub, method)(request, timeout=RPC_TIMEOUT)


def get_model_status(address: str, name: str):
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = name
    with grpc.insecure_channel(address) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        return stub.GetModelStatus(request, timeout=RPC_TIMEOUT)


def verify_model_spec(actual, name: str, signature_name: str, version: int) -> None:
    """_VerifyModelSpec."""
    assert actual.name == name
    assert actual.signature_name == signature_name
    assert actual.version.value == version


def verify_predict_request(
    address: str,
    expected_output: float,
    expected_version: int,
    model_name: str = "default",
    specify_output: bool = True,
    batch_input: bool = False,
    signature_name: str = DEFAULT_SIGNATURE,
    input_name: str = "x",
    output_name: str = "y",
    version_label: str | None = None,
    version: int | None = None,
) -> None:
    """VerifyPredictRequest: x = [2.0] (or [[2.0]]) as a DT_FLOAT tensor in float_val, one
    output back. `input_name` / `output_name`: TF Serving's are always x and y (Keras 3
    names its signatures differently); `version_label` / `version`: the model_spec's."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature_name
    if version_label is not None:
        request.model_spec.version_label = version_label
    if version is not None:
        request.model_spec.version.value = version
    x = request.inputs[input_name]
    x.dtype = types_pb2.DT_FLOAT
    x.float_val.append(2.0)
    x.tensor_shape.dim.add().size = 1
    if batch_input:
        x.tensor_shape.dim.add().size = 1
    if specify_output:
        request.output_filter.append(output_name)
    result = prediction_call(address, "Predict", request)
    assert output_name in result.outputs
    y = result.outputs[output_name]
    assert y.dtype == types_pb2.DT_FLOAT
    assert tf.make_ndarray(y).ravel().tolist() == [expected_output]
    verify_model_spec(result.model_spec, model_name, signature_name, expected_version)
    # TF Serving writes output tensors with AsProtoField (predict_util.cc, the default
    # kAsProtoField): the values in float_val, where its test reads them.
    assert len(y.float_val) == 1, f"not in float_val (TF Serving's encoding): {y}"
    assert y.float_val[0] == expected_output


def call_rest(server: ModelServer, path: str, body=None) -> dict:
    """CallREST: POST with a JSON body, or GET; the answer's JSON (200 expected)."""
    if body is None:
        r = server.http.get(path)
    else:
        r = server.http.post(path, content=json.dumps(body).encode())
    assert r.status_code == 200, r.text
    return json.loads(r.content)


def model_versions(server: ModelServer, name: str) -> list[tuple[str, str]]:
    status = call_rest(server, f"/v1/models/{name}")["model_version_status"]
    return [(s["version"], s["state"]) for s in status]


def sorted_object(obj):
    """SortedObject: dicts and lists sorted, recursively, so order does not count."""
    if isinstance(obj, dict):
        return sorted((k, sorted_object(v)) for k, v in obj.items())
    if isinstance(obj, list | tuple):
        return sorted(sorted_object(x) for x in obj)
    return obj


def example_request(message, signature_name: str):
    request = message()
    request.model_spec.name = "default"
    request.model_spec.signature_name = signature_name
    example = request.input.example_list.examples.add()
    example.features.feature["x"].float_list.value.extend([2.0])
    return request


def fail(message: str):
    raise AssertionError(message)


def wait_until(check, seconds: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + seconds
    while True:
        try:
            return check()
        except (AssertionError, grpc.RpcError) as e:
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not within {seconds} s: {e}") from e
        time.sleep(0.25)
