"""A servable: one loaded version of a SavedModel, its signatures and how to run them
(the manager, `model_server.manager`, decides which versions are loaded).

Two kinds of SavedModel. A TF2 one (an object graph, as tf.saved_model.save and dae's
export write) runs through tf.saved_model.load's concrete functions. A TF1 one
(tf.compat.v1 SavedModelBuilder, like TF Serving's own test models) runs as TF Serving runs
every model: a Session fed and fetched by the SignatureDef's tensor names. tf.saved_model.load
would prune it into functions whose argument shapes come from the SignatureDef, which breaks
twice: a TensorInfo without a shape (TF 1.0 exports, e.g. saved_model_half_plus_three) is
read as a scalar ("Shapes must be equal rank, but are 2 and 0"), and TF Serving feeds any
shape the graph accepts ({"instances": [2.0, 3.0, 4.0]} into half_plus_two's [-1, 1] x).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dae import compat
from dae.serving.format.export import SERVABLE_FILE, WARMUP_FILE

log = logging.getLogger("dae.serving")

PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
SERVE_TAG = "serve"


def clip(text, limit: int = 64) -> str:
    """Client text echoed in an error, cut short: a 10 KB name must not fill (and overflow)
    a client's 8 KB gRPC trailer."""
    text = str(text)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


class ServingError(Exception):
    """An error with a TF Serving status code name: INVALID_ARGUMENT, NOT_FOUND, ..."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


@dataclass
class TensorInfo:
    name: str  # the signature's key, what clients send
    dtype: np.dtype  # object for DT_STRING
    shape: tuple[int | None, ...] | None  # None: unknown rank


@dataclass
class Signature:
    name: str
    inputs: dict[str, TensorInfo]
    outputs: dict[str, TensorInfo]
    fn: object = field(repr=False)  # a concrete function, or (feeds, fetches) of a session
    method_name: str = PREDICT_METHOD  # the SignatureDef's: what Classify/Regress may check
    strict: bool = True  # dae's own model: shapes checked before it runs, not by the model


def _info(key: str, spec) -> TensorInfo:
    shape = None if spec.shape.rank is None else tuple(spec.shape.as_list())
    return TensorInfo(key, np.dtype(spec.dtype.as_numpy_dtype), shape)


def _proto_info(key: str, proto, tensor) -> TensorInfo:
    """A SignatureDef's TensorInfo (no tensor_shape recorded: unknown rank), with the dtype
    of the graph's tensor, what a Session takes: TF 1.0's half_plus_three declares its
    string input DT_FLOAT."""
    shape = None
    if proto.HasField("tensor_shape") and not proto.tensor_shape.unknown_rank:
        shape = tuple(d.size if d.size >= 0 else None for d in proto.tensor_shape.dim)
    return TensorInfo(key, np.dtype(tensor.dtype.as_numpy_dtype), shape)


def _meta_graph(proto):
    """The MetaGraphDef tagged exactly {serve} (TF Serving's default --saved_model_tags),
    else the first that has the tag, else the first."""
    graphs = list(proto.meta_graphs)
    for match in (lambda t: set(t) == {SERVE_TAG}, lambda t: SERVE_TAG in t):
        for mg in graphs:
            if match(mg.meta_info_def.tags):
                return mg
    return graphs[0]


class SavedModelBundle:
    """One loaded version: its signatures, its SignatureDefs (for metadata), a run method."""

    def __init__(self, name: str, version: int, path: Path, warmup: int = 1):
        import tensorflow as tf
        from tensorflow.core.protobuf import saved_model_pb2

        self.name, self.version, self.path = name, version, Path(path)
        self._session, self._warmup = None, warmup
        self.gradients: set[str] = set()  # what this load registers, dropped at unload
        try:
            with compat.tf_gradients_registered() as self.gradients:
                self._load(tf, saved_model_pb2)
        except BaseException:
            forget_gradients(self.gradients)
            self.close()
            raise

    def _load(self, tf, saved_model_pb2) -> None:
        proto = saved_model_pb2.SavedModel()
        proto.ParseFromString((self.path / "saved_model.pb").read_bytes())
        meta_graph = _meta_graph(proto)
        self.signature_defs = meta_graph.signature_def
        self.tf1 = not meta_graph.object_graph_def.nodes
        strict = (self.path / "assets.extra" / SERVABLE_FILE).is_file()
        self.signatures: dict[str, Signature] = {}
        if self.tf1:
            self._load_session(tf, meta_graph)
        else:
            self._loaded = tf.saved_model.load(
                str(self.path), tags=list(meta_graph.meta_info_def.tags)
            )
            for sig_name, fn in self._loaded.signatures.items():
                inputs = {k: _info(k, s) for k, s in fn.structured_input_signature[1].items()}
                outputs = {k: _info(k, s) for k, s in fn.structured_outputs.items()}
                self.signatures[sig_name] = Signature(sig_name, inputs, outputs, fn)
        for sig in self.signatures.values():
            sig.strict = strict
            if sig.name in self.signature_defs:
                sig.method_name = self.signature_defs[sig.name].method_name
        self.input_ranges = _declared_ranges(self.path)
        if self._warmup:  # --enable_model_warmup, --num_request_iterations_for_warmup
            self.warmup(self._warmup)

    def _load_session(self, tf, meta_graph) -> None:
        v1 = tf.compat.v1
        graph = tf.Graph()
        self._session = v1.Session(graph=graph)
        with graph.as_default():
            v1.saved_model.loader.load(
                self._session, list(meta_graph.meta_info_def.tags), str(self.path)
            )
        graph.finalize()  # run from many threads: nothing may be added to it any more
        for sig_name, sd in self.signature_defs.items():
            tensors = [*sd.inputs.values(), *sd.outputs.values()]
            if sig_name.startswith("__") or any(
                t.WhichOneof("encoding") != "name" for t in tensors
            ):
                log.warning(
                    "%s: signature '%s' has sparse or composite tensors: not served",
                    self.path,
                    sig_name,
                )
                continue
            feeds = {k: graph.get_tensor_by_name(t.name) for k, t in sd.inputs.items()}
            fetches = {k: graph.get_tensor_by_name(t.name) for k, t in sd.outputs.items()}
            inputs = {k: _proto_info(k, t, feeds[k]) for k, t in sd.inputs.items()}
            outputs = {k: _proto_info(k, t, fetches[k]) for k, t in sd.outputs.items()}
            self.signatures[sig_name] = Signature(sig_name, inputs, outputs, (feeds, fetches))

    def close(self) -> None:
        """A TF1 model's session (its variables) freed now rather than at collection."""
        session, self._session = self._session, None
        if session is not None:
            session.close()

    def warmup(self, iterations: int = 1) -> int:
        """Replay assets.extra/tf_serving_warmup_requests `iterations` times each, as TF
        Serving does at load (every request kind of PredictionLog: predict, classify,
        regress, multi_inference)."""
        import tensorflow as tf
        from tensorflow_serving.apis import prediction_log_pb2

        path = self.path / "assets.extra" / WARMUP_FILE
        if not path.is_file():
            return 0
        from dae.serving.model_server import (
            inference,  # it imports predict, which imports this module
        )

        count = 0
        for record in tf.data.TFRecordDataset(str(path)).as_numpy_iterator():
            entry = prediction_log_pb2.PredictionLog.FromString(record)
            kind = entry.WhichOneof("log_type")
            for _ in range(iterations):
                self._replay(entry, kind, inference)
            count += 1
        return count

    def _replay(self, entry, kind: str, inference) -> None:
        import tensorflow as tf

        if kind == "predict_log":
            request = entry.predict_log.request
            sig = request.model_spec.signature_name or "serving_default"
            self.run(sig, {k: tf.make_ndarray(v) for k, v in request.inputs.items()})
        elif kind in ("classify_log", "regress_log", "multi_inference_log"):
            inference.warmup(self, getattr(entry, kind).request)
        else:
            raise ServingError("INVALID_ARGUMENT", f"unsupported warmup log type: {kind}")

    def run(self, signature: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The signature's outputs. An error of the model over these inputs (a shape its
        graph refuses, an Example missing a feature) is the client's: its TF status code."""
        import tensorflow as tf

        sig = self.signatures[signature]
        try:
            if self._session is not None:
                return self._run_session(sig, inputs)
            try:
                out = sig.fn(**{k: tf.constant(v) for k, v in inputs.items()})
            except (TypeError, ValueError) as e:  # arguments that do not fit the function
                raise ServingError("INVALID_ARGUMENT", f"{type(e).__name__}: {e}") from None
            return {k: v.numpy() for k, v in out.items()}
        except tf.errors.OpError as e:
            raise ServingError(_code_name(tf, e.error_code), _tidy(e.message)) from None

    def _run_session(self, sig: Signature, inputs: dict[str, np.ndarray]) -> dict:
        """Fed as TF Serving's Session::Run feeds: by tensor, with no check of the value's
        shape against the graph's static one (tf.Session.run would refuse [3] for [-1, 1])."""
        feeds, fetches = sig.fn
        names = list(fetches)
        feed = {feeds[k]: _feedable(v, sig.inputs[k].dtype) for k, v in inputs.items()}
        fetch = [fetches[k] for k in names]
        values = compat.tf_session_run_unchecked(self._session, feed, fetch)
        return dict(zip(names, values, strict=True))


def _feedable(value: np.ndarray, dtype: np.dtype) -> np.ndarray:
    value = np.asarray(value)
    if dtype.kind == "O" and value.dtype.kind == "U":
        return np.vectorize(lambda s: s.encode(), otypes=[object])(value)
    return value


def _tidy(message: str) -> str:
    """An eager function's error as a Session's: without the "Graph execution error:" and
    "Detected at node ... <stack traces unavailable>" preamble, nor the " [Op:...]" tail."""
    import re

    message = re.sub(
        r"^Graph execution error:\s*Detected at node .*?<stack traces unavailable>\s*",
        "",
        message,
        flags=re.S,
    )
    return re.sub(r"\s*\[Op:[^\]]*\]\s*$", "", message)


_CODES = (
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
)


def _code_name(tf, error_code: int) -> str:
    """A TF error code's name (3 -> INVALID_ARGUMENT), as TF Serving passes it on."""
    return next((n for n in _CODES if getattr(tf.errors, n) == error_code), "UNKNOWN")


def forget_gradients(names: set[str]) -> None:
    """Drop a version's entries from TensorFlow's global gradient registry.
    tf.saved_model.load registers a gradient for each custom-gradient function of the model
    under a new name, and nothing ever removes it: each load of the default conv model kept
    ~9 MiB of graphs alive. Serving computes no gradients, so an unloaded (or failed)
    version's entries are dropped. The registry is TensorFlow's internal (dae.compat); a
    version's entries are those its loading thread registered, not whatever appeared in the
    registry meanwhile (two models of a config file load at once, each in its thread)."""
    compat.tf_forget_gradients(names)


def _declared_ranges(path: Path) -> dict[str, tuple[float, float] | None]:
    """dae's export records the input range each signature's graph expects (a VAE's
    `decode` takes unbounded z: null); other models declare none."""
    import json

    meta = path / "assets.extra" / SERVABLE_FILE
    if not meta.is_file():
        return {}
    declared = json.loads(meta.read_text())
    ranges = declared.get("signature_input_ranges") or {"serving_default": declared["input_range"]}
    return {k: None if v is None else (float(v[0]), float(v[1])) for k, v in ranges.items()}
