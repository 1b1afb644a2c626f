"""A servable: one loaded version of a SavedModel, its signatures and how to run them
(the manager, `serving.manager`, decides which versions are loaded)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dae.serving.export import SERVABLE_FILE, WARMUP_FILE

log = logging.getLogger("dae.serving")


class ServingError(Exception):
    """An error with a TF Serving status code name: INVALID_ARGUMENT, NOT_FOUND, ..."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


@dataclass
class TensorInfo:
    name: str  # the signature's key, what clients send
    dtype: np.dtype
    shape: tuple[int | None, ...] | None  # None: unknown rank


@dataclass
class Signature:
    name: str
    inputs: dict[str, TensorInfo]
    outputs: dict[str, TensorInfo]
    fn: object = field(repr=False)


def _info(key: str, spec) -> TensorInfo:
    shape = None if spec.shape.rank is None else tuple(spec.shape.as_list())
    return TensorInfo(key, np.dtype(spec.dtype.as_numpy_dtype), shape)


class Servable:
    """One loaded version: its signatures, its SignatureDefs (for metadata), a run method."""

    def __init__(self, name: str, version: int, path: Path):
        import tensorflow as tf
        from tensorflow.core.protobuf import saved_model_pb2

        self.name, self.version, self.path = name, version, Path(path)
        before = set(_gradients())
        try:
            self._load(tf, saved_model_pb2)
        except BaseException:
            forget_gradients(set(_gradients()) - before)
            raise
        self.gradients = set(_gradients()) - before  # forgotten when it is unloaded

    def _load(self, tf, saved_model_pb2) -> None:
        self._loaded = tf.saved_model.load(str(self.path))
        self.signatures: dict[str, Signature] = {}
        for sig_name, fn in self._loaded.signatures.items():
            inputs = {k: _info(k, s) for k, s in fn.structured_input_signature[1].items()}
            outputs = {k: _info(k, s) for k, s in fn.structured_outputs.items()}
            self.signatures[sig_name] = Signature(sig_name, inputs, outputs, fn)
        proto = saved_model_pb2.SavedModel()
        proto.ParseFromString((self.path / "saved_model.pb").read_bytes())
        self.signature_defs = proto.meta_graphs[0].signature_def
        self.input_ranges = _declared_ranges(self.path)
        self.warmup()

    def warmup(self) -> int:
        """Replay assets.extra/tf_serving_warmup_requests, as TF Serving does at load."""
        import tensorflow as tf
        from tensorflow_serving.apis import prediction_log_pb2

        path = self.path / "assets.extra" / WARMUP_FILE
        if not path.is_file():
            return 0
        count = 0
        for record in tf.data.TFRecordDataset(str(path)).as_numpy_iterator():
            log_entry = prediction_log_pb2.PredictionLog.FromString(record)
            request = log_entry.predict_log.request
            sig = request.model_spec.signature_name or "serving_default"
            inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
            self.run(sig, inputs)
            count += 1
        return count

    def run(self, signature: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import tensorflow as tf

        sig = self.signatures[signature]
        out = sig.fn(**{k: tf.constant(v) for k, v in inputs.items()})
        return {k: v.numpy() for k, v in out.items()}


def _gradients() -> dict:
    """TensorFlow's global gradient registry. tf.saved_model.load registers a gradient for
    each custom-gradient function of the model under a new name, and nothing ever removes
    it: each load of the default conv model kept ~9 MiB of graphs alive. Serving computes no
    gradients, so an unloaded (or failed) version's entries are dropped (`forget_gradients`).
    The registry is TensorFlow's internal: dae.compat checks it is still there."""
    from dae import compat

    return compat.tf_gradient_registry()


def forget_gradients(names: set[str]) -> None:
    registry = _gradients()
    for name in names:
        registry.pop(name, None)


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
