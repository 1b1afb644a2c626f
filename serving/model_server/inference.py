"""Classify, Regress and MultiInference as TF Serving runs them, whichever protocol carried
them: the request's tf.Examples fed serialized to the signature's one string input, its
outputs checked and turned into results (servables/tensorflow/classifier.cc, regressor.cc,
multi_inference.cc; util.cc's InputToSerializedExampleTensor). Messages are TF Serving's.

As TF Serving by default (--enable_signature_method_name_check off), a signature is taken
for its shape, not its SignatureDef's method_name: TF2 SavedModels can only record predict.
A predictor with `method_name_check` set refuses a signature of another method.
"""

from __future__ import annotations

import asyncio

import numpy as np
from tensorflow_serving.apis import classification_pb2, inference_pb2, model_pb2, regression_pb2

from dae.serving.model_server.predict import Limits, check_rows, clip, invalid
from dae.serving.model_server.servable import (
    CLASSIFY_METHOD,
    REGRESS_METHOD,
    SavedModelBundle,
    ServingError,
)

DEFAULT_SIGNATURE = "serving_default"
INPUTS, CLASSES, SCORES, OUTPUTS = "inputs", "classes", "scores", "outputs"


def serialized_examples(input_proto, limits: Limits) -> np.ndarray:
    """The Input's examples as a [N] string tensor; each of example_list_with_context is
    the context's bytes then its own, which parses as the two merged (the example's
    features win), as TF Serving concatenates them."""
    kind = input_proto.WhichOneof("kind")
    examples = getattr(input_proto, kind).examples if kind else []
    if not examples:
        raise invalid("Input is empty.")
    check_rows(INPUTS, len(examples), limits)
    context = b""
    if kind == "example_list_with_context":
        context = input_proto.example_list_with_context.context.SerializeToString()
    out = np.empty(len(examples), dtype=object)
    for i, example in enumerate(examples):
        out[i] = context + example.SerializeToString()
    return out


def _debug(servable: SavedModelBundle, sig_name: str) -> str:
    sd = servable.signature_defs.get(sig_name)  # (indexing a proto map adds the key)
    return clip(str(sd) if sd is not None else sig_name, 1500)


def _signature(servable: SavedModelBundle, name: str, missing: str):
    sig = servable.signatures.get(name)
    if sig is None:
        raise invalid(f"{missing}{clip(name)}")
    return sig


def _string_input(sig, key: str) -> str:
    """dae's check: TF Serving would feed strings anyway and fail in the model."""
    info = sig.inputs[key]
    if info.dtype.kind not in "OS":
        raise invalid(
            f"signature '{sig.name}' input '{key}' is {info.dtype.name}: Classify and Regress "
            "feed a string tensor of serialized tf.Examples"
        )
    return key


def _one_input(servable: SavedModelBundle, sig, check_method: bool, kind: str, method: str) -> None:
    """What PreProcessClassification and PreProcessRegression check alike."""
    if check_method and sig.method_name != method:
        raise invalid(
            f"Expected {kind} signature method_name to be {method}. Was: {sig.method_name}"
        )
    if len(sig.inputs) != 1:
        raise invalid("Expected one input Tensor.")


def preprocess_classification(servable: SavedModelBundle, sig, check_method: bool) -> list[str]:
    """PreProcessClassification: the outputs to read (classes and/or scores)."""
    _one_input(servable, sig, check_method, "classification", CLASSIFY_METHOD)
    if len(sig.outputs) not in (1, 2):
        raise invalid(f"Expected one or two output Tensors, found {len(sig.outputs)}")
    if INPUTS not in sig.inputs:
        raise invalid(
            f"No classification inputs found in SignatureDef: {_debug(servable, sig.name)}"
        )
    wanted = [k for k in (CLASSES, SCORES) if k in sig.outputs]
    if not wanted:
        raise invalid(
            'Expected classification signature outputs to contain at least one of "classes" '
            f'or "scores". Signature was: {_debug(servable, sig.name)}'
        )
    _string_input(sig, INPUTS)
    return wanted


def preprocess_regression(servable: SavedModelBundle, sig, check_method: bool) -> list[str]:
    """PreProcessRegression: the output to read."""
    _one_input(servable, sig, check_method, "regression", REGRESS_METHOD)
    if len(sig.outputs) != 1:
        raise invalid("Expected one output Tensor.")
    if INPUTS not in sig.inputs:
        raise invalid(f"No regression inputs found in SignatureDef: {_debug(servable, sig.name)}")
    if OUTPUTS not in sig.outputs:
        raise invalid(f"No regression outputs found in SignatureDef: {_debug(servable, sig.name)}")
    _string_input(sig, INPUTS)
    return [OUTPUTS]


def _shape(a: np.ndarray) -> str:
    return "[" + ",".join(str(d) for d in a.shape) + "]"


def _dtype_name(a: np.ndarray) -> str:
    import tensorflow as tf
    from tensorflow.core.framework import types_pb2

    try:
        return types_pb2.DataType.Name(tf.as_dtype(a.dtype).as_datatype_enum)
    except TypeError:
        return a.dtype.name


def classification_result(n: int, outputs: dict, result) -> None:
    """PostProcessClassificationResult: [batch, classes] classes (strings) and/or scores
    (float32), one Classifications of (label, score) per example."""
    classes, scores = outputs.get(CLASSES), outputs.get(SCORES)
    for what, t, want in (("classes", classes, "DT_STRING"), ("scores", scores, "DT_FLOAT")):
        if t is None:
            continue
        if t.ndim != 2:
            raise invalid(f"Expected Tensor shape: [batch_size num_classes] but got {_shape(t)}")
        if _dtype_name(t) != want:
            raise invalid(f"Expected {what} Tensor of {want}. Got: {_dtype_name(t)}")
        if t.shape[0] != n:
            raise invalid(f"Expected {what} output batch size of {n}. Got: {t.shape[0]}")
    if classes is not None and scores is not None and classes.shape[1] != scores.shape[1]:
        raise invalid(
            "Tensors class and score should match in dim_size(1). "
            f"Got {classes.shape[1]} vs. {scores.shape[1]}"
        )
    num = (classes if classes is not None else scores).shape[1]
    for i in range(n):
        entry = result.classifications.add()
        for c in range(num):
            cl = entry.classes.add()
            if classes is not None:
                label = classes[i, c]
                cl.label = label.decode("utf-8", "replace") if isinstance(label, bytes) else label
            if scores is not None:
                cl.score = scores[i, c]


def regression_result(n: int, outputs: dict, result) -> None:
    """PostProcessRegressionResult: a float32 [batch] or [batch, 1] output, one value each."""
    t = outputs[OUTPUTS]
    if not (t.ndim == 1 or (t.ndim == 2 and t.shape[1] == 1)):
        raise invalid(
            "Expected output Tensor shape to be either [batch_size] or [batch_size, 1] "
            f"but got {_shape(t)}"
        )
    if t.shape[0] != n:
        raise invalid(f"Input batch size did not match output batch size: {n} vs. {t.shape[0]}")
    if _dtype_name(t) != "DT_FLOAT":
        raise invalid(f"Expected output Tensor of DT_FLOAT.  Got: {_dtype_name(t)}")
    for value in t.reshape(-1):
        result.regressions.add().value = value


def _model_spec(spec, name: str, sig_name: str, version: int) -> None:
    """MakeModelSpec: the request's name, its signature name (the default when empty), the
    version that answered."""
    spec.Clear()
    spec.name, spec.signature_name = name, sig_name or DEFAULT_SIGNATURE
    spec.version.value = version


def _run_single(
    servable: SavedModelBundle,
    request,
    limits: Limits,
    check_method,
    preprocess,
    response,
    fill_result,
):
    """RunClassify / RunRegress on a servable already found."""
    name = request.model_spec.signature_name or DEFAULT_SIGNATURE
    sig = _signature(servable, name, "No signature was found with the name: ")
    preprocess(servable, sig, check_method)
    examples = serialized_examples(request.input, limits)
    outputs = servable.run(sig.name, {INPUTS: examples})
    _model_spec(response.model_spec, request.model_spec.name, name, servable.version)
    fill_result(len(examples), outputs, response.result)
    return response


def classify_sync(servable: SavedModelBundle, request, limits: Limits, check_method=False):
    response = classification_pb2.ClassificationResponse()
    return _run_single(
        servable,
        request,
        limits,
        check_method,
        preprocess_classification,
        response,
        classification_result,
    )


def regress_sync(servable: SavedModelBundle, request, limits: Limits, check_method=False):
    return _run_single(
        servable,
        request,
        limits,
        check_method,
        preprocess_regression,
        regression_pb2.RegressionResponse(),
        regression_result,
    )


def multi_inference_sync(servable: SavedModelBundle, request, limits: Limits, check_method=False):
    """TensorFlowMultiInferenceRunner::Infer: every task on one model, the same examples
    fed to each task's signature, results in task order. `check_method` does not apply:
    each task names its method."""
    model, seen, plan = "", set(), []
    for task in request.tasks:
        if not task.model_spec.name:
            raise invalid("Found ModelSpec with an empty model name.")
        if model and task.model_spec.name != model:
            raise invalid(
                "All ModelSpecs in a MultiInferenceRequest must access the same model name."
            )
        model = task.model_spec.name
        name = task.model_spec.signature_name or DEFAULT_SIGNATURE
        if name in seen:
            raise invalid(f"Duplicate evaluation of signature: {clip(name)}")
        seen.add(name)
        sig = _signature(servable, name, "Requested signature not found in model graph: ")
        if task.method_name == CLASSIFY_METHOD:
            preprocess_classification(servable, sig, False)
        elif task.method_name == REGRESS_METHOD:
            preprocess_regression(servable, sig, False)
        else:
            raise ServingError(
                "UNIMPLEMENTED", f"Unsupported signature method_name: {clip(task.method_name)}"
            )
        plan.append((task, sig))
    examples = serialized_examples(request.input, limits)
    outputs = {sig.name: servable.run(sig.name, {INPUTS: examples}) for _, sig in plan}
    response = inference_pb2.MultiInferenceResponse()
    for task, sig in plan:
        result = response.results.add()
        if task.method_name == CLASSIFY_METHOD:
            classification_result(len(examples), outputs[sig.name], result.classification_result)
        else:
            regression_result(len(examples), outputs[sig.name], result.regression_result)
        _model_spec(result.model_spec, task.model_spec.name, sig.name, servable.version)
    return response


def warmup(servable: SavedModelBundle, request) -> None:
    """A warmup record's classify, regress or multi_inference request, replayed at load."""
    if isinstance(request, classification_pb2.ClassificationRequest):
        classify_sync(servable, request, Limits())
    elif isinstance(request, regression_pb2.RegressionRequest):
        regress_sync(servable, request, Limits())
    else:
        multi_inference_sync(servable, request, Limits())


# -- the front ends' entry points: the servable found on the loop, the work off it ---------


def _servable(predictor, spec):
    version = spec.version.value if spec.HasField("version") else None
    return predictor.servable(spec.name, version, spec.version_label or None)


async def _off_loop(fn, predictor, servable, request):
    check = bool(getattr(predictor, "method_name_check", False))
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, fn, servable, request, predictor.limits, check)


async def classify(predictor, request):
    if not request.HasField("model_spec"):
        raise invalid("Missing ModelSpec")
    return await _off_loop(
        classify_sync, predictor, _servable(predictor, request.model_spec), request
    )


async def regress(predictor, request):
    if not request.HasField("model_spec"):
        raise invalid("Missing ModelSpec")
    return await _off_loop(
        regress_sync, predictor, _servable(predictor, request.model_spec), request
    )


async def multi_inference(predictor, request):
    """The servable is the first task's model and version, as TF Serving's
    RunMultiInferenceWithServerCore finds it."""
    spec = request.tasks[0].model_spec if request.tasks else model_pb2.ModelSpec()
    return await _off_loop(multi_inference_sync, predictor, _servable(predictor, spec), request)
