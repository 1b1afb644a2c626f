"""Servables and their lifecycle, as TF Serving manages them.

A ServableManager polls a model base path (`<base>/<version>/`), loads new versions, swaps
the served set in one assignment (an in-flight request keeps the Servable object it
already holds, so nothing fails mid-swap) and unloads what the version policy drops.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import weakref
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


@dataclass
class VersionState:
    state: str  # TF Serving's ModelVersionStatus.State name
    error: str = ""


def _fingerprint(path: Path) -> tuple:
    """What a version folder holds (names, sizes, modification times): a failed version is
    tried again when this changes, as when a pusher rewrites its files."""
    seen = []
    for root, dirs, files in os.walk(path, onerror=lambda e: None):
        dirs.sort()
        for name in sorted(files):
            try:
                st = os.stat(os.path.join(root, name))
            except OSError:
                continue
            seen.append(
                (os.path.relpath(os.path.join(root, name), path), st.st_size, st.st_mtime_ns)
            )
    return tuple(seen)


def _contract(servable: Servable) -> dict[str, tuple]:
    def tensors(infos):
        return {k: (i.dtype.name, i.shape) for k, i in infos.items()}

    return {k: (tensors(s.inputs), tensors(s.outputs)) for k, s in servable.signatures.items()}


def incompatibility(served: Servable, new: Servable) -> str | None:
    """Why clients of `served` would fail against `new` (a signature gone, or an input or
    output with another name, dtype or shape), or None."""
    old_c, new_c = _contract(served), _contract(new)
    for sig, (old_in, old_out) in old_c.items():
        if sig not in new_c:
            return f"it has no signature '{sig}'"
        for what, old, now in (
            ("input", old_in, new_c[sig][0]),
            ("output", old_out, new_c[sig][1]),
        ):
            if old.keys() != now.keys():
                return f"signature '{sig}' {what}s are {sorted(now)}, not {sorted(old)}"
            for k in old:
                if old[k] != now[k]:
                    (dt, shape), (dt0, shape0) = now[k], old[k]
                    return (f"signature '{sig}' {what} '{k}' is {dt} {_dims(shape)}, "
                            f"not {dt0} {_dims(shape0)}")  # fmt: skip
    return None


def _dims(shape) -> str:
    if shape is None:
        return "[unknown rank]"
    return "[" + ", ".join("N" if d is None else str(d) for d in shape) + "]"


class ServableManager:
    """Keeps the latest `num_versions` versions under `base` in service, with TF Serving's
    AvailabilityPreservingPolicy (core/availability_preserving_policy.cc): a version leaves
    service only once an aspired (wanted) version is available, so a push that fails to
    load, or a removed version, never leaves requests without a servable.

    Beyond TF Serving: a failed version is loaded again when its folder changes, and a
    version whose signatures would break the clients of the version in service (see
    `incompatibility`) is not swapped in: it is reported END with the difference, and the
    old version keeps serving. A new input contract takes a restart (or another model
    name)."""

    def __init__(self, name: str, base: Path, num_versions: int = 1):
        self.name, self.base, self.num_versions = name, Path(base), num_versions
        self._served: dict[int, Servable] = {}
        self.states: dict[int, VersionState] = {}
        self._failed: dict[int, tuple] = {}  # version -> fingerprint of the folder that failed
        self._released: list[weakref.ref] = []  # unloaded, possibly still in a request
        self._settles = 0
        self.after_swap = lambda: None  # the server's janitor gives the memory back
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
        """Load the aspired versions not in service (newest first); swap; unload what the
        policy lets go; give the memory of unloaded versions back."""
        with self._lock:
            on_disk = versions(self.base)
            aspired = on_disk[-self.num_versions :] if on_disk else []
            served = dict(self._served)
            for v in sorted(aspired, reverse=True):
                if v not in served:
                    loaded = self._load(v, served)
                    if loaded is not None:
                        served[v] = loaded
            if not aspired or any(v in served for v in aspired):
                keep = {v: s for v, s in served.items() if v in aspired}
            else:  # nothing aspired is available: keep serving what we have
                keep = {v: served[v] for v in sorted(served)[-self.num_versions :]}
            changed = keep.keys() != self._served.keys()
            self._served = keep  # the swap
            for v in served.keys() - keep.keys():
                forget_gradients(served[v].gradients)
                self.states[v] = VersionState("END")
                self._released.append(weakref.ref(served[v]))
                log.info("unloaded %s version %s", self.name, v)
            del served
            if changed:
                _settle_heap()
            self._collect_released()
            if changed:
                self.after_swap()

    def _load(self, v: int, served: dict[int, Servable]) -> Servable | None:
        path = self.base / str(v)
        fingerprint = _fingerprint(path)
        if self._failed.get(v) == fingerprint:
            return None  # failed as it is: wait for the folder to change
        self.states[v] = VersionState("LOADING")
        try:
            servable = Servable(self.name, v, path)
        except Exception as e:  # a broken version must not take the server down
            message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            log.error("failed to load %s version %s: %s", self.name, v, message)
            self.states[v] = VersionState("END", f"failed to load: {message}")
            self._failed[v] = fingerprint
            return None
        reference = served[max(served)] if served else None
        why = incompatibility(reference, servable) if reference is not None else None
        if why:
            forget_gradients(servable.gradients)
            log.error("not serving %s version %s: %s", self.name, v, why)
            self.states[v] = VersionState(
                "END", f"not swapped in: {why} (version {reference.version} is in service; "
                "restart the server to serve a new signature)",
            )  # fmt: skip
            self._failed[v] = fingerprint
            return None
        self._failed.pop(v, None)
        self.states[v] = VersionState("AVAILABLE")
        log.info("loaded %s version %s", self.name, v)
        return servable

    def _collect_released(self) -> None:
        """An unloaded version still held by a request in flight when it was swapped out was
        frozen with the heap; settle again (a few times at most) until it is gone."""
        self._released = [r for r in self._released if r() is not None]
        if self._released and self._settles < 10:
            self._settles += 1
            _settle_heap()
            self._released = [r for r in self._released if r() is not None]
            if not self._released:
                self.after_swap()
        if not self._released:
            self._settles = 0

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
