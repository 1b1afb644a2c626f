"""What a Predict call does, whichever protocol carried it: find the servable, validate the
inputs against its signature, run it (through the batcher when batching is on).

Validation is stricter than TF Serving's, which leaves shape errors to the model: every
bad input is an INVALID_ARGUMENT that names the problem, never an internal error. A
request may not ask for more than `max_rows` rows, nor declare a tensor larger than
`max_bytes` decoded (a short `float_val` is repeated to fill its shape): both are checked
before anything is allocated.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections import Counter
from dataclasses import dataclass

import numpy as np

from dae.serving.model_server import monitoring
from dae.serving.model_server.batching import Batcher, QueueFull, TooLarge
from dae.serving.model_server.core import ServerCore
from dae.serving.model_server.servable import ServingError, Signature, clip

DEFAULT_SIGNATURE = "serving_default"
DEFAULT_MAX_ROWS = 1024


def invalid(message: str) -> ServingError:
    return ServingError("INVALID_ARGUMENT", message)


@dataclass(frozen=True)
class Limits:
    max_rows: int = DEFAULT_MAX_ROWS  # --max-request-rows
    max_bytes: int = 64 * 1024 * 1024  # --max-request-bytes, also for a decoded tensor


def _shape_text(shape) -> str:
    return "[" + ", ".join("N" if d is None else str(d) for d in shape) + "]"


def check_dims(
    sig: Signature, name: str, dims: list[int], itemsize: int, limits: Limits, text=False
) -> None:
    """A tensor's declared shape, before it is decoded: a known input (of numbers unless
    `text`), no negative size, the signature's shape (dae's own models: others take what
    their graph takes, as in TF Serving), at most `max_rows` rows and `max_bytes` once
    decoded."""
    info = sig.inputs.get(name)
    if info is None:
        expected = ", ".join(sig.inputs)
        raise invalid(f"unknown input '{clip(name)}'; signature '{sig.name}' takes: {expected}")
    if text and info.dtype.kind not in "OSU":
        raise invalid(f"input '{name}' must be numeric {info.dtype.name}, got non-numeric values")
    if any(d < 0 for d in dims):
        raise invalid(f"input '{clip(name)}' has a negative dimension in its shape {dims[:8]}")
    if (
        sig.strict
        and info.shape is not None
        and (
            len(dims) != len(info.shape)
            or any(d is not None and d != got for d, got in zip(info.shape, dims, strict=True))
        )
    ):
        raise invalid(f"input '{name}' has shape {clip(dims)}, expected {_shape_text(info.shape)}")
    if dims:
        check_rows(name, dims[0], limits)
    size = math.prod(dims) * itemsize
    if size > limits.max_bytes:
        raise invalid(
            f"input '{name}' of shape {clip(dims)} is {size} bytes decoded, over the "
            f"--max-request-bytes limit of {limits.max_bytes}"
        )


def check_rows(name: str, rows: int, limits: Limits) -> None:
    if rows > limits.max_rows:
        raise invalid(
            f"input '{name}' has {rows} rows, over the server's --max-request-rows "
            f"{limits.max_rows}: send smaller batches"
        )


def _cast(name: str, value: np.ndarray, dtype: np.dtype) -> np.ndarray:
    kind = value.dtype.kind
    if dtype.kind in "OSU":  # DT_STRING: bytes, or text as UTF-8
        if kind == "U":
            return np.vectorize(str.encode, otypes=[object])(value) if value.size else value
        if kind in "OS":
            return value
        raise invalid(f"input '{name}' must be strings, got {value.dtype.name}")
    if kind in "OUSV" or (kind == "b" and dtype.kind != "b"):
        raise invalid(f"input '{name}' must be numeric {dtype.name}, got non-numeric values")
    if kind == "c" or (dtype.kind in "iu" and kind == "f"):
        raise invalid(f"input '{name}' must be {dtype.name}, got {value.dtype.name}")
    return value.astype(dtype, copy=False)


def validate_inputs(
    sig: Signature,
    inputs: dict[str, np.ndarray],
    input_range: tuple[float, float] | None,
    limits: Limits = Limits(),
) -> dict[str, np.ndarray]:
    """Inputs checked and cast to the signature's dtypes, or an INVALID_ARGUMENT. A
    signature of dae's own (`sig.strict`) also gets its shapes, batch sizes and finite values
    checked; any other model is fed what TF Serving would feed it (a scalar, [3] for a
    [-1, 1] input) and its graph decides."""
    expected = ", ".join(sig.inputs)
    for name in inputs:
        if name not in sig.inputs:
            raise invalid(f"unknown input '{clip(name)}'; signature '{sig.name}' takes: {expected}")
    out = {}
    batch = None
    for name, info in sig.inputs.items():
        if name not in inputs:
            raise invalid(f"missing input '{name}'; signature '{sig.name}' takes: {expected}")
        value = _cast(name, np.asarray(inputs[name]), info.dtype)
        if not sig.strict:
            if value.ndim:
                check_rows(name, value.shape[0], limits)
            out[name] = value
            continue
        if value.ndim == 0 or value.shape[0] == 0:
            raise invalid(f"input '{name}' is an empty batch")
        if info.shape is not None and (
            value.ndim != len(info.shape)
            or any(
                d is not None and d != got for d, got in zip(info.shape, value.shape, strict=True)
            )
        ):
            raise invalid(
                f"input '{name}' has shape {clip(list(value.shape))}, "
                f"expected {_shape_text(info.shape)}"
            )
        check_rows(name, value.shape[0], limits)
        if batch is not None and value.shape[0] != batch:
            raise invalid(f"inputs disagree on batch size ({batch} vs {value.shape[0]})")
        batch = value.shape[0]
        if value.dtype.kind == "f":
            if not np.isfinite(value).all():
                raise invalid(f"input '{name}' has NaN or infinite values")
            if input_range and (value.min() < input_range[0] or value.max() > input_range[1]):
                lo, hi = input_range
                raise invalid(
                    f"input '{name}' has values in [{value.min():.4g}, {value.max():.4g}], "
                    f"outside the model's range [{lo:g}, {hi:g}]"
                )
        out[name] = value
    return out


class Predictor:
    """Shared by the REST and gRPC front ends (and so by one batching queue)."""

    def __init__(self, core: ServerCore, batcher: Batcher | None = None, limits: Limits = Limits()):
        self.core = core
        self.batcher = batcher
        self.limits = limits
        self.counts: Counter[str] = Counter()  # answered requests by status code name
        self._counting = threading.Lock()  # gRPC's worker threads and the event loop count
        self.janitor = None  # memory.Janitor: told of every large request once answered
        self.registry = monitoring.registry(self)  # this server's metrics, apart from others'

    def record(self, code: str, nbytes: int = 0) -> None:
        """Every answered request, of every API and protocol, by its status code."""
        with self._counting:
            self.counts[code] += 1
        if self.janitor is not None:
            self.janitor.note(nbytes)

    def request_counts(self) -> dict[str, int]:
        """A copy of the counts: a scrape must not iterate while a thread adds a status."""
        with self._counting:
            return dict(self.counts)

    def metrics(self) -> bytes:
        """Prometheus text (TF Serving's /monitoring/prometheus/metrics)."""
        return monitoring.exposition(self.registry)

    def servable(self, model: str, version: int | None, label: str | None = None):
        manager = self.core.manager(model)
        if label:
            version = manager.version_for(label)
        return manager.get(version)

    def signature(self, servable, name: str | None) -> Signature:
        name = name or DEFAULT_SIGNATURE
        if name not in servable.signatures:
            known = ", ".join(sorted(servable.signatures))
            raise invalid(f"Serving signature name: '{clip(name)}' not found (signatures: {known})")
        return servable.signatures[name]

    async def predict(
        self,
        model: str,
        version: int | None,
        signature: str | None,
        inputs: dict,
        label: str | None = None,
    ) -> tuple[object, Signature, dict[str, np.ndarray]]:
        servable = self.servable(model, version, label)
        sig = self.signature(servable, signature)
        arrays = validate_inputs(sig, inputs, servable.input_ranges.get(sig.name), self.limits)
        batchable = (
            len(arrays) == 1
            and next(iter(arrays.values())).ndim >= 1
            and all(o.shape and o.shape[0] is None for o in sig.outputs.values())
        )  # rows in, rows out: what a batch can be split back into
        if self.batcher is not None and batchable:
            ((name, rows),) = arrays.items()
            key = (servable.version, id(servable), sig.name, rows.shape[1:], rows.dtype.str)
            try:
                out = await self.batcher.submit(
                    key, lambda r: servable.run(sig.name, {name: r}), rows
                )
            except QueueFull as e:
                raise ServingError("RESOURCE_EXHAUSTED", str(e)) from None
            except TooLarge as e:
                raise invalid(str(e)) from None
        else:
            loop = asyncio.get_running_loop()
            out = await loop.run_in_executor(None, servable.run, sig.name, arrays)
        return servable, sig, out
