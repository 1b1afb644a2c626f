"""TF Serving's own test models served as TF Serving serves them: TF1 SavedModels load and
predict, and Classify / Regress / MultiInference answer over gRPC and REST with the answers
TF Serving's tests expect (model_servers/tensorflow_model_server_test.py: half_plus_two with
x = 2.0 gives 3.0). The front ends run in this process, on one event loop thread."""

from __future__ import annotations

import base64

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import classification_pb2, inference_pb2, predict_pb2, regression_pb2
from tf_serving_models import (
    Front,
    OneModel,
    example,
    half_plus_three_tf1,
    half_plus_two_tf1,
    half_plus_two_tf2,
    unknown_rank_tf2,
)

from dae.serving.apis.json_numbers import decimal
from dae.serving.model_server.servable import SavedModelBundle

CLASSIFY, REGRESS = "tensorflow/serving/classify", "tensorflow/serving/regress"
MAX_ROWS = 4


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    base = tmp_path_factory.mktemp("tf-serving-models")
    return {
        "tf1": half_plus_two_tf1(base / "tf1"),
        "three": half_plus_three_tf1(base / "three"),
        "tf2": half_plus_two_tf2(base / "tf2"),
        "any_rank": unknown_rank_tf2(base / "any_rank"),
    }


@pytest.fixture(scope="module")
def front(models):
    servables = {
        "half_plus_two": SavedModelBundle("half_plus_two", 123, models["tf1"]),
        "half_plus_three": SavedModelBundle("half_plus_three", 123, models["three"]),
        "tf2": SavedModelBundle("tf2", 123, models["tf2"]),
        "any_rank": SavedModelBundle("any_rank", 1, models["any_rank"]),
    }
    f = Front(OneModel(servables, max_rows=MAX_ROWS))
    yield f
    f.close()


def _input(request, *xs, **context):
    if context:
        request.input.example_list_with_context.context.ParseFromString(example(**context))
        target = request.input.example_list_with_context.examples
    else:
        target = request.input.example_list.examples
    for x in xs:
        target.add().ParseFromString(example(x=x) if x is not None else example(y=1.0))
    return request


def _classify(model, sig, *xs, **context):
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name, request.model_spec.signature_name = model, sig
    return _input(request, *xs, **context)


def _regress(model, sig, *xs, **context):
    request = regression_pb2.RegressionRequest()
    request.model_spec.name, request.model_spec.signature_name = model, sig
    return _input(request, *xs, **context)


# -- loading ---------------------------------------------------------------------------


def test_tf1_models_load_where_tf_saved_model_load_fails(models):
    """TF 1.0's SignatureDefs have no tensor shapes: tf.saved_model.load reads them as
    scalars and fails; the servable runs the graph as TF Serving does."""
    with pytest.raises(ValueError, match="Shapes must be equal rank"):
        tf.saved_model.load(str(models["three"]))
    three = SavedModelBundle("half_plus_three", 123, models["three"])
    assert three.tf1 and three.signatures["serving_default"].inputs["x"].shape is None
    out = three.run("serving_default", {"x": np.array([1.0, 2.0, 5.0], np.float32)})
    np.testing.assert_allclose(out["y"], [3.5, 4.0, 5.5])
    two = SavedModelBundle("half_plus_two", 123, models["tf1"])
    methods = {k: s.method_name for k, s in two.signatures.items()}
    assert methods == {
        "serving_default": "tensorflow/serving/predict",
        "classify_x_to_y": CLASSIFY,
        "regress_x_to_y": REGRESS,
        "regress_x_to_y2": REGRESS,
        "regress_x2_to_y3": REGRESS,
    }
    assert not two.signatures["serving_default"].strict
    two.close()
    three.close()


def test_warmup_replays_classify_and_regress_logs(models, tmp_path):
    import shutil

    from tensorflow_serving.apis import prediction_log_pb2

    path = shutil.copytree(models["tf1"], tmp_path / "123")
    (path / "assets.extra").mkdir()
    logs = [
        prediction_log_pb2.PredictionLog(
            classify_log=prediction_log_pb2.ClassifyLog(
                request=_classify("m", "classify_x_to_y", 2.0)
            )
        ),
        prediction_log_pb2.PredictionLog(
            regress_log=prediction_log_pb2.RegressLog(request=_regress("m", "regress_x_to_y", 2.0))
        ),
    ]
    with tf.io.TFRecordWriter(str(path / "assets.extra" / "tf_serving_warmup_requests")) as w:
        for entry in logs:
            w.write(entry.SerializeToString())
    assert SavedModelBundle("m", 123, path).warmup() == 2


# -- predict on models that are not dae's --------------------------------------------------


def test_rest_predict_feeds_what_tf_serving_feeds(front):
    """TF Serving's README: {"instances": [...]} of half_plus_two's [-1, 1] x is fed as [3]."""
    r = front.post("/v1/models/half_plus_two:predict", {"instances": [2.0, 3.0, 4.0]})
    assert r.status_code == 200 and r.json() == {"predictions": [3.0, 3.5, 4.0]}
    r = front.post("/v1/models/half_plus_two:predict", {"instances": [[2.0], [4.0]]})
    assert r.json() == {"predictions": [[3.0], [4.0]]}
    r = front.post("/v1/models/half_plus_three:predict", {"instances": [1.0, 2.0, 5.0]})
    assert r.json() == {"predictions": [3.5, 4.0, 5.5]}


@pytest.mark.parametrize("x", [3.0, [1.0, 2.0, 3.0], [[1.0], [2.0]]])
def test_an_input_of_unknown_rank_takes_any_shape(front, x):
    r = front.post("/v1/models/any_rank:predict", {"inputs": x})
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(r.json()["outputs"], 2 * np.asarray(x))


def test_grpc_predict_a_scalar_into_a_regress_signature(front):
    """predict_util_test.cc PredictionWithNamedRegressionSignature: x2 = 2.0 gives 4.0."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.signature_name = "half_plus_two", "regress_x2_to_y3"
    request.inputs["inputs"].CopyFrom(tf.make_tensor_proto(2.0, tf.float32))
    response = front.stub.Predict(request)
    assert tf.make_ndarray(response.outputs["outputs"]) == 4.0


def test_rest_predict_strings_in_and_out(front):
    """A DT_STRING input takes strings and {"b64": ...}; string outputs come back as text."""
    b64 = base64.b64encode(example(x=2.0)).decode()
    body = {"signature_name": "classify_x_to_y", "instances": [{"b64": b64}]}
    r = front.post("/v1/models/half_plus_two:predict", body)
    assert r.status_code == 200 and r.json() == {"predictions": [[3.0]]}, r.text
    body = {"signature_name": "classify_with_classes", "instances": [{"inputs": {"b64": b64}}]}
    r = front.post("/v1/models/tf2:predict", body)
    assert r.json() == {"predictions": [{"classes": ["lo", "hi"], "scores": [-2.0, 3.0]}]}
    body = {"signature_name": "classify_x_to_y", "inputs": [[1.0]]}
    r = front.post("/v1/models/half_plus_two:predict", body)
    expected = "JSON Value: 1.0 Type: Number is not of expected type: string"
    assert r.status_code == 400 and r.json()["error"] == expected


def test_a_shape_the_graph_refuses_is_invalid_argument(front):
    r = front.post("/v1/models/tf2:predict", {"instances": [["a"]]})
    assert r.status_code == 400


# -- TF Serving's JSON on the REST surface (util/json_tensor.cc, json_tensor_test.cc) -----


def _raw(front, model: str, body: bytes) -> tuple[int, bytes]:
    r = front.post(f"/v1/models/{model}:predict", body)
    return r.status_code, r.content


@pytest.mark.parametrize(
    "body, expected",
    [
        # MultipleNamedTensor: NaN and Infinity are numbers (kParseNanAndInfFlag); they come
        # back as WriteDecimal writes them
        (b'{"inputs": [NaN, Infinity, -Infinity, 1.5]}',
         b'{"outputs":[NaN,Infinity,-Infinity,3.0]}'),
        (b'{"instances": [[NaN], [2.0]]}', b'{"predictions":[[NaN],[4.0]]}'),
        # a scalar in, a scalar out (AddTensorValues writes a rank-0 tensor bare)
        (b'{"inputs": 1.5}', b'{"outputs":3.0}'),
        # six digits when they read back, else nine (FromJsonSingleFloatTensorSixDigitPrecision)
        (b'{"inputs": [4500000, 0.000015, 277778.75, 1.0000005]}',
         b'{"outputs":[9e+06,3e-05,555557.5,2.00000095]}'),
        # FloatTensorThatExceedsMaxReturnsInf: a double past float's range is infinite
        (b'{"inputs": [1.79769e+308]}', b'{"outputs":[Infinity]}'),
        # kParseStopWhenDoneFlag: what follows the document is not read
        (b'{"inputs": [1.0]} trailing', b'{"outputs":[2.0]}'),
    ],
)  # fmt: skip
def test_rest_numbers_as_tf_serving_reads_and_writes_them(front, body, expected):
    assert _raw(front, "any_rank", body) == (200, expected)


def test_rest_columnar_reads_only_the_signatures_inputs(front):
    """FillTensorMapFromInputsMap looks up each input of the signature: other keys are
    not read."""
    body = b'{"inputs": {"x": [1.0], "z": "anything"}}'
    assert _raw(front, "half_plus_two", body) == (200, b'{"outputs":[2.5]}')


_DOC = '{\n    "instances": %s\n}'


@pytest.mark.parametrize(
    "body, message",
    [
        (b"", "JSON Parse error: The document is empty"),
        (b'{"instances": [1,', "JSON Parse error: Invalid value. at offset: 17"),
        (b'{"instances": [1 2]}',
         "JSON Parse error: Missing a comma or ']' after an array element. at offset: 17"),
        (b"[1]", "JSON Value: [1] Is not object"),
        (b'{"signature_name": 5, "instances": [1]}',
         'JSON Value: {\n    "signature_name": 5,\n    "instances": [1]\n} not formatted '
         "correctly. 'signature_name' key must be a string value."),
        (b'{"instances": [1], "inputs": [1]}',
         'JSON Value: {\n    "instances": [1],\n    "inputs": [1]\n} Not formatted correctly '
         "expecting only one of 'inputs' or 'instances' keys to exist "),
        (b'{"instances": 1}',
         "JSON Value: " + _DOC % "1" + " Expecting 'instances' to be an list/array"),
        (b'{"instances": []}', "JSON Value: " + _DOC % "[]" + " No values in 'instances' array"),
        (b'{"x": [1]}', "Missing 'inputs' or 'instances' key"),
        # SingleUnnamedTensorErrors
        (b'{"instances": [[1,2],[3,4],[5,6,7]]}',
         "Failed to process element: 2 of 'instances' list. Error: INVALID_ARGUMENT: "
         "Expecting tensor size: 2 but got: 3"),
        (b'{"instances": [[1,2],[3,4],[[5,6]]]}',
         "Failed to process element: 2 of 'instances' list. Error: INVALID_ARGUMENT: "
         "Expecting shape [2] but got: [1,2]"),
        (b'{"instances": [1, [1]]}',
         "Failed to process element: 1 of 'instances' list. Error: INVALID_ARGUMENT: "
         "Expecting shape [] but got: [1]"),
        (b'{"instances": [[1,2],["a", "b"]]}',
         "Failed to process element: 1 of 'instances' list. Error: INVALID_ARGUMENT: "
         'JSON Value: "a" Type: String is not of expected type: float'),
        (b'{"instances": [true]}',
         "Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: "
         "JSON Value: true Type: True is not of expected type: float"),
        (b'{"instances": [{"z": [1]}]}',
         "Failed to process element: 0 key: z of 'instances' list. Error: INVALID_ARGUMENT: "
         "JSON object: does not have named input: z"),
        (b'{"instances": [{"x": 1}, [1]]}',
         "Expecting object but got list at item 1 of input list"),
        (b'{"instances": [[1], {"x": [1]}]}',
         "Expecting value/list but got object at item 1 of input list"),
        # columnar: FillTensorProto's own checks
        (b'{"inputs": [[1, 2], [3]]}',
         "Encountered list at unexpected size: 1 at level: 1 expected size: 2"),
        (b'{"inputs": [[1, 2], 3]}',
         "JSON Value: 3 found at incorrect level: 2 in the JSON DOM. Expected at level: 2"),
        (b'{"inputs": [1, [2]]}', "Encountered list at unexpected level: 1 expected < 1"),
        (b'{"inputs": {"y": [1]}}', "Missing named input: x in 'inputs' object."),
        (b'{"inputs": [{"a": 1}]}',
         'JSON Value: {\n    "a": 1\n} Type: Object is not of expected type: float'),
    ],
)  # fmt: skip
def test_rest_errors_are_worded_as_tf_servings(front, body, message):
    r = front.post("/v1/models/half_plus_two:predict", body)
    assert r.status_code == 400 and r.json()["error"] == message


# -- Classify, Regress, MultiInference -----------------------------------------------------


@pytest.mark.parametrize("model", ["half_plus_two", "tf2"])
def test_grpc_classify_and_regress(front, model):
    """tensorflow_model_server_test.py _TestClassify / _TestRegress, TF1 and TF2 models."""
    response = front.stub.Classify(_classify(model, "classify_x_to_y", 2.0))
    assert [[(c.label, c.score) for c in e.classes] for e in response.result.classifications] == [
        [("", 3.0)]
    ]
    spec = response.model_spec
    assert (spec.name, spec.version.value, spec.signature_name) == (model, 123, "classify_x_to_y")
    response = front.stub.Regress(_regress(model, "regress_x_to_y", 2.0, 4.0))
    assert [r.value for r in response.result.regressions] == [3.0, 4.0]
    assert response.model_spec.signature_name == "regress_x_to_y"
    response = front.stub.Regress(_regress(model, "regress_x_to_y2", 2.0))
    assert [r.value for r in response.result.regressions] == [4.0]


def test_classes_and_scores(front):
    response = front.stub.Classify(_classify("tf2", "classify_with_classes", 2.0, 0.0))
    got = [
        [(c.label, round(c.score, 4)) for c in e.classes] for e in response.result.classifications
    ]
    assert got == [[("lo", -2.0), ("hi", 3.0)], [("lo", -1.0), ("hi", 2.0)]]


def test_context_features_merge_into_each_example(front):
    """Example bytes after the context's: the example's own features win."""
    response = front.stub.Regress(_regress("half_plus_two", "regress_x_to_y", 2.0, x=10.0))
    assert [r.value for r in response.result.regressions] == [3.0]
    request = _regress("half_plus_two", "regress_x_to_y", x=4.0)
    request.input.example_list_with_context.examples.add()  # no features of its own
    assert [r.value for r in front.stub.Regress(request).result.regressions] == [4.0]


def test_multi_inference(front):
    """tensorflow_model_server_test.py _TestMultiInference: results in task order."""
    request = inference_pb2.MultiInferenceRequest()
    for sig, method in [
        ("regress_x_to_y", REGRESS),
        ("classify_x_to_y", CLASSIFY),
        ("regress_x_to_y2", REGRESS),
    ]:
        task = request.tasks.add(method_name=method)
        task.model_spec.name, task.model_spec.signature_name = "half_plus_two", sig
    _input(request, 2.0)
    results = front.stub.MultiInference(request).results
    assert results[0].regression_result.regressions[0].value == 3.0
    assert results[1].classification_result.classifications[0].classes[0].score == 3.0
    assert results[2].regression_result.regressions[0].value == 4.0
    assert [
        (r.model_spec.name, r.model_spec.version.value, r.model_spec.signature_name)
        for r in results
    ] == [
        ("half_plus_two", 123, "regress_x_to_y"),
        ("half_plus_two", 123, "classify_x_to_y"),
        ("half_plus_two", 123, "regress_x_to_y2"),
    ]


def test_rest_classify_and_regress(front):
    """tensorflow_model_server_test.py testClassifyREST / testRegressREST."""
    body = {"signature_name": "classify_x_to_y", "examples": [{"x": 2.0}]}
    r = front.post("/v1/models/half_plus_two:classify", body)
    assert r.status_code == 200 and r.json() == {"results": [[["", 3.0]]]}
    body = {"signature_name": "regress_x_to_y", "examples": [{"x": 2.0}, {"x": [4.0]}]}
    r = front.post("/v1/models/half_plus_two/versions/123:regress", body)
    assert r.status_code == 200 and r.json() == {"results": [3.0, 4.0]}
    body = {"signature_name": "regress_x_to_y", "context": {"x": 2.0}, "examples": [{}]}
    assert front.post("/v1/models/tf2:regress", body).json() == {"results": [3.0]}
    body = {"signature_name": "classify_with_classes", "examples": [{"x": 2.0}]}
    assert front.post("/v1/models/tf2:classify", body).json() == {
        "results": [[["lo", -2.0], ["hi", 3.0]]]
    }


@pytest.mark.parametrize(
    "value, expected",
    [
        (0.2, b"0.2"),
        (3.0, b"3.0"),
        (1e-5, b"1e-05"),
        (1234567.0, b"1234567.0"),
        (0.1 + 0.2, b"0.3"),
        (float("nan"), b"NaN"),
        (float("-inf"), b"-Infinity"),
    ],
)
def test_scores_are_written_as_tf_serving_writes_floats(value, expected):
    assert decimal(value) == expected


def test_json_examples_become_tf_examples(front, monkeypatch):
    """json_tensor.cc's rules: integers int64, other numbers float, strings and b64 bytes."""
    from dae.serving.model_server import inference

    seen = {}

    def spy(servable, request, limits, check):
        seen["input"] = request.input
        return real(servable, request, limits, check)

    real = inference.regress_sync
    monkeypatch.setattr(inference, "regress_sync", spy)
    body = {
        "signature_name": "regress_x_to_y",
        "examples": [
            {
                "x": 2.0,
                "n": [1, 2],
                "s": "text",
                "b": {"b64": base64.b64encode(b"\0\1").decode()},
                "t": True,
                "e": [],
            }
        ],
    }
    assert front.post("/v1/models/half_plus_two:regress", body).json() == {"results": [3.0]}
    f = seen["input"].example_list.examples[0].features.feature
    assert list(f["x"].float_list.value) == [2.0] and list(f["n"].int64_list.value) == [1, 2]
    assert list(f["s"].bytes_list.value) == [b"text"] and f["b"].bytes_list.value == [b"\0\1"]
    assert list(f["t"].int64_list.value) == [1] and f["e"].WhichOneof("kind") is None


# -- errors ----------------------------------------------------------------------------------


def _grpc_error(call, request) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as e:
        call(request)
    return e.value.code(), e.value.details()


INVALID = grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    "method, request_, code, message",
    [
        (
            "Classify",
            _classify("half_plus_two", "", 2.0),
            INVALID,
            "No classification inputs found in SignatureDef",
        ),
        (
            "Regress",
            _regress("half_plus_two", "classify_x_to_y", 2.0),
            INVALID,
            "No regression outputs found in SignatureDef",
        ),
        (
            "Classify",
            _classify("half_plus_two", "nope", 2.0),
            INVALID,
            "No signature was found with the name: nope",
        ),
        (
            "Regress",
            _regress("half_plus_two", "regress_x_to_y", None),
            INVALID,
            "Feature: x (data type: float) is required but could not be found.",
        ),
        (
            "Regress",
            _regress("tf2", "regress_x_to_y", None),
            INVALID,
            "Feature: x (data type: float) is required but could not be found.",
        ),
        ("Regress", _regress("half_plus_two", "regress_x_to_y"), INVALID, "Input is empty."),
        (
            "Regress",
            _regress("half_plus_two", "regress_x_to_y", *[1.0] * (MAX_ROWS + 1)),
            INVALID,
            "--max-request-rows",
        ),
        (
            "Regress",
            _regress("half_plus_two", "regress_x2_to_y3", 2.0),
            INVALID,
            "feed a string tensor of serialized tf.Examples",
        ),
        ("Regress", regression_pb2.RegressionRequest(), INVALID, "Missing ModelSpec"),
        ("Classify", _classify("nope", "classify_x_to_y", 2.0), grpc.StatusCode.NOT_FOUND, ""),
    ],
)
def test_grpc_errors(front, method, request_, code, message):
    got, details = _grpc_error(getattr(front.stub, method), request_)
    assert got == code and message in details


def test_method_name_check_refuses_another_method(front):
    """--enable_signature_method_name_check: the SignatureDef's method_name must match."""
    front.predictor.method_name_check = True
    try:
        code, details = _grpc_error(
            front.stub.Classify, _classify("half_plus_two", "regress_x_to_y", 2.0)
        )
        assert code == INVALID and details == (
            "Expected classification signature method_name to be tensorflow/serving/classify. "
            "Was: tensorflow/serving/regress"
        )
        code, details = _grpc_error(front.stub.Regress, _regress("tf2", "regress_x_to_y", 2.0))
        assert code == INVALID and "Was: tensorflow/serving/predict" in details
    finally:
        front.predictor.method_name_check = False


def _multi(*tasks):
    request = inference_pb2.MultiInferenceRequest()
    for model, sig, method in tasks:
        task = request.tasks.add(method_name=method)
        task.model_spec.name, task.model_spec.signature_name = model, sig
    return _input(request, 2.0)


@pytest.mark.parametrize(
    "request_, code, message",
    [
        (
            _multi(
                ("half_plus_two", "regress_x_to_y", REGRESS),
                ("half_plus_two", "regress_x_to_y", REGRESS),
            ),
            INVALID,
            "Duplicate evaluation of signature: regress_x_to_y",
        ),
        (
            _multi(
                ("half_plus_two", "regress_x_to_y", REGRESS), ("tf2", "classify_x_to_y", CLASSIFY)
            ),
            INVALID,
            "must access the same model name",
        ),
        (
            _multi(("half_plus_two", "regress_x_to_y", CLASSIFY)),
            INVALID,
            'outputs to contain at least one of "classes" or "scores"',
        ),
        (
            _multi(("half_plus_two", "serving_default", "tensorflow/serving/predict")),
            grpc.StatusCode.UNIMPLEMENTED,
            "Unsupported signature method_name",
        ),
        (
            _multi(("half_plus_two", "nope", REGRESS)),
            INVALID,
            "Requested signature not found in model graph: nope",
        ),
    ],
)
def test_multi_inference_errors(front, request_, code, message):
    got, details = _grpc_error(front.stub.MultiInference, request_)
    assert got == code and message in details


@pytest.mark.parametrize(
    "verb, body, message",
    [
        ("classify", {"examples": [{"x": 2.0}]}, "No classification inputs found"),
        (
            "regress",
            {"signature_name": "regress_x_to_y"},
            "key 'examples' is expected and was not found",
        ),
        (
            "regress",
            {"signature_name": "regress_x_to_y", "examples": []},
            "'examples' value is an empty array",
        ),
        (
            "regress",
            {"signature_name": "regress_x_to_y", "examples": {"x": 1.0}},
            "Expecting 'examples' value to be an list/array",
        ),
        (
            "regress",
            {"signature_name": "regress_x_to_y", "examples": [{"x": 2.0}] * 5},
            "--max-request-rows",
        ),
        (
            "regress",
            {"signature_name": "regress_x_to_y", "examples": [{"y": 2.0}]},
            "Feature: x (data type: float) is required",
        ),
        (
            "regress",
            {"signature_name": "regress_x_to_y", "examples": [{"x": [2.0, 3]}]},
            "Unexpected element type in feature: x expecting type: float",
        ),
        (
            "regress",
            {"signature_name": "regress_x_to_y", "examples": [{"x": None}]},
            "Feature: x has element with unexpected JSON type: Null",
        ),
        (
            "regress",
            {"signature_name": "regress_x_to_y", "examples": [{"x": [[2.0]]}]},
            "Feature: x has element with unexpected JSON type: Array",
        ),
        (
            "regress",
            {"signature_name": "regress_x_to_y", "examples": [{"x": 2**63}]},
            "has uint64_t element",
        ),
        (
            "regress",
            {"signature_name": "regress_x_to_y", "examples": [{"b": {"b64": "%%"}}]},
            "Unable to base64 decode",
        ),
        (
            "regress",
            {"signature_name": "regress_x_to_y", "examples": [3]},
            "Example must be JSON object but got JSON Number",
        ),
        (
            "regress",
            {"signature_name": 7, "examples": [{"x": 2.0}]},
            "'signature_name' key must be a string value",
        ),
        ("regress", [1], "Is not object"),
        ("regress", b"", "JSON Parse error: The document is empty"),
        ("regress", b"{", "JSON Parse error"),
        (
            "classify",
            {"signature_name": "classify_x_to_y", "examples": [{"x": 2.0}, {"x": "a"}]},
            "Data types don't match",
        ),
    ],
)
def test_rest_errors_are_400(front, verb, body, message):
    r = front.post(f"/v1/models/half_plus_two:{verb}", body)
    assert r.status_code == 400 and message in r.json()["error"], r.text


def test_rest_unknown_model_is_404(front):
    r = front.post("/v1/models/nope:regress", {"examples": [{"x": 2.0}]})
    assert r.status_code == 404
