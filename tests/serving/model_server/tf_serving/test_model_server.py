"""tensorflow_model_server_test.py's cases, one test a case (its name in the docstring), over
gRPC and REST, and the base's readiness probe; the config file cases are in
test_config_and_versions.py. The harness: conftest.py."""

from __future__ import annotations

import json
import re

import grpc
import pytest
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    inference_pb2,
    predict_pb2,
    regression_pb2,
)
from tfs_calls import (
    call_rest,
    example_request,
    get_model_status,
    prediction_call,
    sorted_object,
    verify_model_spec,
    verify_predict_request,
)
from tfs_models import DATA, DEFAULT_SIGNATURE
from tfs_servers import ModelServer

# Fourteen `dae serve`s, each loading TensorFlow: the whole suite, not the inner loop.
pytestmark = pytest.mark.slow

# ---- tensorflow_model_server_test.py -----------------------------------------------------


def test_get_model_status(half_plus_two_server):
    """testGetModelStatus: ModelService.GetModelStatus."""
    result = get_model_status(half_plus_two_server.grpc, "default")
    assert len(result.model_version_status) == 1
    assert result.model_version_status[0].version == 123
    assert result.model_version_status[0].status.error_code == 0  # OK


def test_get_model_metadata(half_plus_two_server):
    """testGetModelMetadata: PredictionService.GetModelMetadata (and, beyond TF Serving's
    test, the SignatureDefMap's keys)."""
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = "default"
    request.metadata_field.append("signature_def")
    result = prediction_call(half_plus_two_server.grpc, "GetModelMetadata", request)
    assert result.model_spec.name == "default"
    assert result.model_spec.version.value == 123
    assert len(result.metadata) == 1
    assert "signature_def" in result.metadata
    sigmap = get_model_metadata_pb2.SignatureDefMap()
    assert result.metadata["signature_def"].Unpack(sigmap)
    assert set(sigmap.signature_def) == {
        DEFAULT_SIGNATURE,
        "classify_x_to_y",
        "regress_x_to_y",
        "regress_x_to_y2",
        "regress_x2_to_y3",
    }


def _test_classify(server: ModelServer) -> None:
    """_TestClassify."""
    request = example_request(classification_pb2.ClassificationRequest, "classify_x_to_y")
    result = prediction_call(server.grpc, "Classify", request)
    assert len(result.result.classifications) == 1
    assert len(result.result.classifications[0].classes) == 1
    assert result.result.classifications[0].classes[0].score == 3.0
    verify_model_spec(result.model_spec, "default", "classify_x_to_y", 123)


def test_classify(half_plus_two_server):
    """testClassify: PredictionService.Classify, TF1 model."""
    _test_classify(half_plus_two_server)


def test_classify_tf2(half_plus_two_tf2_server):
    """testClassifyTf2: PredictionService.Classify, TF2 model (its classify signature's
    method_name is predict, as TF2 writes them)."""
    _test_classify(half_plus_two_tf2_server)


def _test_regress(server: ModelServer) -> None:
    """_TestRegress."""
    request = example_request(regression_pb2.RegressionRequest, "regress_x_to_y")
    result = prediction_call(server.grpc, "Regress", request)
    assert len(result.result.regressions) == 1
    assert result.result.regressions[0].value == 3.0
    verify_model_spec(result.model_spec, "default", "regress_x_to_y", 123)


def test_regress(half_plus_two_server):
    """testRegress: PredictionService.Regress, TF1 model."""
    _test_regress(half_plus_two_server)


def test_regress_tf2(half_plus_two_tf2_server):
    """testRegressTf2: PredictionService.Regress, TF2 model."""
    _test_regress(half_plus_two_tf2_server)


def _test_multi_inference(server: ModelServer) -> None:
    """_TestMultiInference: a regress and a classify task on one input."""
    request = inference_pb2.MultiInferenceRequest()
    for signature, method in (
        ("regress_x_to_y", "tensorflow/serving/regress"),
        ("classify_x_to_y", "tensorflow/serving/classify"),
    ):
        task = request.tasks.add()
        task.model_spec.name = "default"
        task.model_spec.signature_name = signature
        task.method_name = method
    example = request.input.example_list.examples.add()
    example.features.feature["x"].float_list.value.extend([2.0])
    result = prediction_call(server.grpc, "MultiInference", request)
    assert len(result.results) == 2
    assert result.results[0].regression_result.regressions[0].value == 3.0
    assert result.results[1].classification_result.classifications[0].classes[0].score == 3.0
    for i in range(2):
        spec = request.tasks[i].model_spec
        verify_model_spec(result.results[i].model_spec, spec.name, spec.signature_name, 123)


def test_multi_inference(half_plus_two_server):
    """testMultiInference: PredictionService.MultiInference, TF1 model."""
    _test_multi_inference(half_plus_two_server)


def test_multi_inference_tf2(half_plus_two_tf2_server):
    """testMultiInferenceTf2: PredictionService.MultiInference, TF2 model."""
    _test_multi_inference(half_plus_two_tf2_server)


def test_predict_saved_model(half_plus_two_server):
    """testPredictSavedModel: _TestPredict, with and without an output filter."""
    verify_predict_request(half_plus_two_server.grpc, 3.0, 123)
    verify_predict_request(half_plus_two_server.grpc, 3.0, 123, specify_output=False)


def test_good_grpc_channel_args(grpc_channel_args_server):
    """testGoodGrpcChannelArgs: the server starts with --grpc_channel_arguments."""
    verify_predict_request(grpc_channel_args_server.grpc, 3.0, 123, specify_output=False)


def test_classify_rest(half_plus_two_server):
    """testClassifyREST."""
    body = {"signature_name": "classify_x_to_y", "examples": [{"x": 2.0}]}
    assert call_rest(half_plus_two_server, "/v1/models/default:classify", body) == {
        "results": [[["", 3.0]]]
    }


def test_regress_rest(half_plus_two_server):
    """testRegressREST."""
    body = {"signature_name": "regress_x_to_y", "examples": [{"x": 2.0}]}
    assert call_rest(half_plus_two_server, "/v1/models/default:regress", body) == {"results": [3.0]}


def test_predict_rest(half_plus_two_server):
    """testPredictREST: row format."""
    body = {"instances": [2.0, 3.0, 4.0]}
    assert call_rest(half_plus_two_server, "/v1/models/default:predict", body) == {
        "predictions": [3.0, 3.5, 4.0]
    }


def test_predict_columnar_rest(half_plus_two_server):
    """testPredictColumnarREST: columnar format."""
    body = {"inputs": [2.0, 3.0, 4.0]}
    assert call_rest(half_plus_two_server, "/v1/models/default:predict", body) == {
        "outputs": [3.0, 3.5, 4.0]
    }


def test_get_status_rest(half_plus_two_server):
    """testGetStatusREST: the document, exactly."""
    assert call_rest(half_plus_two_server, "/v1/models/default") == {
        "model_version_status": [
            {
                "version": "123",
                "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""},
            }
        ]
    }


def expected_half_plus_two_metadata() -> dict:
    """half_plus_two_model_metadata.json, as TF Serving's test reads it, with one change for
    the model: its metadata was written from TF Serving's checked-in model, whose
    tf_example placeholder has no shape (unknown rank); its generator
    (saved_model_half_plus_two.py), and so the generated model, gives it shape [None]."""
    expected = json.loads((DATA / "half_plus_two_model_metadata.json").read_text())
    for sig in expected["metadata"]["signature_def"]["signature_def"].values():
        for info in sig["inputs"].values():
            if info["name"] == "tf_example:0":
                assert info["tensor_shape"] == {"dim": [], "unknown_rank": True}
                info["tensor_shape"] = {"dim": [{"size": "-1", "name": ""}], "unknown_rank": False}
    return expected


def test_get_model_metadata_rest(half_plus_two_server):
    """testGetModelMetadataREST: the document equals TF Serving's (default-valued fields
    included: "signature_name": "", dims' "name": "", "unknown_rank": false,
    "defaults": {}), compared as TF Serving compares it, after SortedObject."""
    actual = call_rest(half_plus_two_server, "/v1/models/default/metadata")
    assert sorted_object(actual) == sorted_object(expected_half_plus_two_metadata())


def test_prometheus_endpoint(monitoring_server):
    """testPrometheusEndpoint: metrics at monitoring_config.txt's path."""
    r = monitoring_server.http.get("/monitoring/prometheus/metrics")
    assert r.status_code == 200, r.text
    assert "# TYPE" in r.text


def test_predict_uds(half_plus_two_server):
    """testPredictUDS: gRPC Predict over --grpc_socket_path."""
    verify_predict_request(
        f"unix:{half_plus_two_server.socket_path}", 3.0, 123, specify_output=False
    )


def test_tf_saved_model_save(tf_saved_model_save_server):
    """test_tf_saved_model_save: a tf.saved_model.save'd concrete function."""
    verify_predict_request(tf_saved_model_save_server.grpc, 12.0, 123, specify_output=False)


def test_tf_saved_model_save_multiple_signatures(tf_saved_model_save_multiple_signatures_server):
    """test_tf_saved_model_save_multiple_signatures."""
    address = tf_saved_model_save_multiple_signatures_server.grpc
    verify_predict_request(address, 2.0, 123, signature_name="custom_signature_key")
    verify_predict_request(address, 1.0, 123)


def test_sequential_keras_saved_model_save(keras_sequential_server):
    """test_sequential_keras_saved_model_save: Keras 3 names the default save signature's
    tensors 'inputs' and 'output_0' (see keras_sequential_saved_model_save)."""
    verify_predict_request(
        keras_sequential_server.grpc,
        2.0,
        123,
        batch_input=True,
        specify_output=False,
        input_name="inputs",
        output_name="output_0",
    )


def test_distrat_sequential_keras_saved_model_save(distrat_keras_sequential_server):
    """test_distrat_sequential_keras_saved_model_save: a model built under MirroredStrategy
    on 2 virtual CPUs, exported with Keras 3's model.export (input x, output output_0)."""
    verify_predict_request(
        distrat_keras_sequential_server.grpc,
        2.0,
        123,
        batch_input=True,
        specify_output=False,
        output_name="output_0",
    )


# ---- the base's, not a case of its own in TF Serving's file ------------------------------


def test_wait_for_server_ready_probe(half_plus_two_server):
    """WaitForServerReady: TF Serving's harness knows a server is up when a Predict for a
    missing model fails with details naming a 'Servable'."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "intentionally_missing_model"
    with pytest.raises(grpc.RpcError) as e:
        prediction_call(half_plus_two_server.grpc, "Predict", request)
    assert "Servable" in e.value.details()
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_get_model_metadata_rest_tf2(half_plus_two_tf2_server):
    """Beyond TF Serving's file: a TF2 SavedModel's metadata shows every SignatureDef on
    disk, __saved_model_init_op included, printed as TF Serving prints it
    (saved_model_half_plus_two_tf2_2_versions_metadata.json; "defaults": {} since TF
    Serving prints SignatureDef.defaults), and TF2's method_name predict everywhere."""
    actual = call_rest(half_plus_two_tf2_server, "/v1/models/default/metadata")
    assert actual["model_spec"] == {"name": "default", "signature_name": "", "version": "123"}
    sigs = actual["metadata"]["signature_def"]["signature_def"]
    assert sigs["__saved_model_init_op"] == {
        "inputs": {},
        "outputs": {
            "__saved_model_init_op": {
                "dtype": "DT_INVALID",
                "tensor_shape": {"dim": [], "unknown_rank": True},
                "name": "NoOp",
            }
        },
        "method_name": "",
        "defaults": {},
    }
    default = sigs[DEFAULT_SIGNATURE]
    shape = {"dim": [{"size": "1", "name": ""}], "unknown_rank": False}
    assert default["inputs"] == {
        "x": {"dtype": "DT_FLOAT", "tensor_shape": shape, "name": "serving_default_x:0"}
    }
    assert default["outputs"]["y"]["tensor_shape"] == shape
    assert re.fullmatch(r"StatefulPartitionedCall(_\d+)?:0", default["outputs"]["y"]["name"])
    assert {s["method_name"] for k, s in sigs.items() if k != "__saved_model_init_op"} == {
        "tensorflow/serving/predict"
    }
