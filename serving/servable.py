"""Servables and their lifecycle, as TF Serving manages them.

A ServableManager polls a model base path (`<base>/<version>/`), loads new versions, swaps
the served set in one assignment (an in-flight request keeps the Servable object it
already holds, so nothing fails mid-swap) and unloads what the version policy drops.
"""

from __future__ import annotations

import gc
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dae.serving.export import SERVABLE_FILE, WARMUP_FILE, versions

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
        self._loaded = tf.saved_model.load(str(path))
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


@dataclass
class VersionState:
    state: str  # TF Serving's ModelVersionStatus.State name
    error: str = ""


class ServableManager:
    """Keeps the latest `num_versions` versions under `base` loaded (TF Serving's default
    policy is the latest one)."""

    def __init__(self, name: str, base: Path, num_versions: int = 1):
        self.name, self.base, self.num_versions = name, Path(base), num_versions
        self._served: dict[int, Servable] = {}
        self.states: dict[int, VersionState] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- what requests see ---------------------------------------------------------------

    def get(self, version: int | None = None) -> Servable:
        served = self._served  # one read: a swap can't change it under us
        if not served:
            raise ServingError(
                "UNAVAILABLE", f"Servable not found for request: Latest({self.name})"
            )
        if version is None:
            return served[max(served)]
        if version not in served:
            raise ServingError(
                "NOT_FOUND", f"Servable not found for request: Specific({self.name}, {version})"
            )
        return served[version]

    # -- lifecycle -----------------------------------------------------------------------

    def poll(self) -> None:
        """Load what the policy wants and is not loaded; then swap; then unload the rest."""
        with self._lock:
            on_disk = versions(self.base)
            wanted = on_disk[-self.num_versions :] if on_disk else []
            served = dict(self._served)
            for v in wanted:
                if v in served or self.states.get(v, VersionState("")).state == "END":
                    continue
                self.states[v] = VersionState("LOADING")
                try:
                    served[v] = Servable(self.name, v, self.base / str(v))
                except Exception as e:  # a broken version must not take the server down
                    log.error("failed to load %s version %s: %s", self.name, v, e)
                    self.states[v] = VersionState("END", f"failed to load: {e}")
                    continue
                self.states[v] = VersionState("AVAILABLE")
                log.info("loaded %s version %s", self.name, v)
            keep = {v: s for v, s in served.items() if v in wanted}
            changed = keep.keys() != self._served.keys()
            self._served = keep  # the swap
            for v in served.keys() - keep.keys():
                self.states[v] = VersionState("END")
                log.info("unloaded %s version %s", self.name, v)
            if changed:
                _settle_heap()

    def start(self, poll_seconds: float) -> None:
        self.poll()
        if poll_seconds > 0:
            self._thread = threading.Thread(
                target=self._loop, args=(poll_seconds,), name="poll", daemon=True
            )
            self._thread.start()

    def _loop(self, seconds: float) -> None:
        while not self._stop.wait(seconds):
            try:
                self.poll()
            except Exception:  # keep polling; the next look may succeed
                log.exception("polling %s failed", self.base)

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)


def _settle_heap() -> None:
    """Collect once, then freeze what is left (TensorFlow's millions of long-lived objects)
    out of the cyclic GC's sight. Otherwise the lists a JSON request allocates trigger full
    collections that walk all of them, a stall on every other REST request."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
