"""Servables' lifecycle, as TF Serving's manager runs it.

A ServableManager polls a model base path (`<base>/<version>/`), loads new versions, swaps
the served set in one assignment (an in-flight request keeps the SavedModelBundle object it
already holds, so nothing fails mid-swap) and unloads what the version policy drops.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path

from dae.serving.format.export import version_dirs
from dae.serving.model_server.model_config import ModelConfig
from dae.serving.model_server.servable import SavedModelBundle, ServingError, clip, forget_gradients

log = logging.getLogger("dae.serving")


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


def _contract(servable: SavedModelBundle) -> dict[str, tuple]:
    def tensors(infos):
        return {k: (i.dtype.name, i.shape) for k, i in infos.items()}

    return {k: (tensors(s.inputs), tensors(s.outputs)) for k, s in servable.signatures.items()}


def incompatibility(served: SavedModelBundle, new: SavedModelBundle) -> str | None:
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
                    return (
                        f"signature '{sig}' {what} '{k}' is {dt} {_dims(shape)}, "
                        f"not {dt0} {_dims(shape0)}"
                    )
    return None


def _dims(shape) -> str:
    if shape is None:
        return "[unknown rank]"
    return "[" + ", ".join("N" if d is None else str(d) for d in shape) + "]"


class ServableManager:
    """Keeps the versions its policy aspires to (TF Serving's latest N, all, or specific)
    under `base` in service, with TF Serving's
    AvailabilityPreservingPolicy (core/availability_preserving_policy.cc): a version leaves
    service only once an aspired (wanted) version is available, so a push that fails to
    load, or a removed version, never leaves requests without a servable.

    Beyond TF Serving: a failed version is loaded again when its folder changes, and a
    version whose signatures would break the clients of the version in service (see
    `incompatibility`) is not swapped in: it is reported END with the difference, and the
    old version keeps serving. A new input contract takes a restart (or another model
    name)."""

    def __init__(self, config: ModelConfig, warmup: int = 1):
        self.config, self.warmup = config, warmup  # warmup: replays of each record (0: off)
        self.name, self.base = config.name, Path(config.base_path)
        self.labels: dict[str, int] = {}  # set by the server core once their versions serve
        self._served: dict[int, SavedModelBundle] = {}
        # Replaced (under the lock), never changed in place: a reader takes it once and
        # iterates that snapshot while a poll records new states.
        self.states: dict[int, VersionState] = {}
        self._failed: dict[int, tuple] = {}  # version -> fingerprint of the folder that failed
        self._released: list[weakref.ref] = []  # unloaded, possibly still in a request
        self._settles = 0
        self.after_swap = lambda: None  # the server's janitor gives the memory back
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- what requests see ---------------------------------------------------------------

    def get(self, version: int | None = None) -> SavedModelBundle:
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

    def version_for(self, label: str) -> int:
        """A version label's version (ServerCore::GetModelVersionForLabel)."""
        version = self.labels.get(label)
        if version is None:
            raise ServingError(
                "INVALID_ARGUMENT", f"Unrecognized servable version label: {clip(label)}"
            )
        return version

    def available(self) -> list[int]:
        """Not under the lock, which a poll holds for as long as a version loads: status and
        metrics answer from the states as they were."""
        states = self.states  # one read: a poll replaces it, never changes it
        return sorted(v for v, s in states.items() if s.state == "AVAILABLE")

    def reconfigure(self, config: ModelConfig) -> None:
        """A reloaded config for the same base path: its policy rules from the next poll."""
        with self._lock:
            self.config = config

    # -- lifecycle -----------------------------------------------------------------------

    def poll(self) -> None:
        """Load the aspired versions not in service (newest first); swap; unload what the
        policy lets go; give the memory of unloaded versions back."""
        with self._lock:
            folders = version_dirs(self.base)
            aspired = self.config.policy.aspired(list(folders))
            served = dict(self._served)
            for v in sorted(aspired, reverse=True):
                if v not in served:
                    loaded = self._load(v, folders[v], served)
                    if loaded is not None:
                        served[v] = loaded
            if not aspired or any(v in served for v in aspired):
                keep = {v: s for v, s in served.items() if v in aspired}
            else:  # nothing aspired is available: keep serving what we have
                keep = {v: served[v] for v in sorted(served)[-max(len(aspired), 1) :]}
            changed = keep.keys() != self._served.keys()
            self._served = keep  # the swap
            for v in served.keys() - keep.keys():
                forget_gradients(served[v].gradients)
                self._record(v, VersionState("END"))
                self._released.append(weakref.ref(served[v]))
                log.info("unloaded %s version %s", self.name, v)
            del served
            if changed:
                _settle_heap()
            self._collect_released()
            if changed:
                self.after_swap()

    def _record(self, v: int, state: VersionState) -> None:
        """A version's new state, under the lock: a new dict (see `states`)."""
        self.states = {**self.states, v: state}

    def _load(
        self, v: int, path: Path, served: dict[int, SavedModelBundle]
    ) -> SavedModelBundle | None:
        fingerprint = _fingerprint(path)
        if self._failed.get(v) == fingerprint:
            return None  # failed as it is: wait for the folder to change
        self._record(v, VersionState("LOADING"))
        try:
            servable = SavedModelBundle(self.name, v, path, self.warmup)
        except Exception as e:  # a broken version must not take the server down
            message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            log.error("failed to load %s version %s: %s", self.name, v, message)
            self._record(v, VersionState("END", f"failed to load: {message}"))
            self._failed[v] = fingerprint
            return None
        # Only a version that would become the default (the newest) must keep its clients'
        # contract; older ones (all, specific) are asked for by number.
        reference = served[max(served)] if served and v > max(served) else None
        why = incompatibility(reference, servable) if reference is not None else None
        if why:
            forget_gradients(servable.gradients)
            log.error("not serving %s version %s: %s", self.name, v, why)
            self._record(
                v,
                VersionState(
                    "END",
                    f"not swapped in: {why} (version {reference.version} is in service; "
                    "restart the server to serve a new signature)",
                ),
            )
            self._failed[v] = fingerprint
            return None
        self._failed.pop(v, None)
        self._record(v, VersionState("AVAILABLE"))
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

    def stop(self, unload: bool = False) -> None:
        """Stop polling; with `unload`, also take every version out of service (a model
        removed from the config)."""
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        if unload:
            with self._lock:
                served, self._served = self._served, {}
                for v, servable in served.items():
                    forget_gradients(servable.gradients)
                    self._record(v, VersionState("END"))
                del served
                _settle_heap()


def _settle_heap() -> None:
    """Collect once, then freeze what is left (TensorFlow's millions of long-lived objects)
    out of the cyclic GC's sight. Otherwise the lists a JSON request allocates trigger full
    collections that walk all of them, a stall on every other REST request."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
