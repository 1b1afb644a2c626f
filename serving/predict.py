"""What a Predict call does, whichever protocol carried it: find the servable, validate the
inputs against its signature, run it (through the batcher when batching is on).

Validation is stricter than TF Serving's, which leaves shape errors to the model: every
bad input is an INVALID_ARGUMENT that names the problem, never an internal error.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import numpy as np

from dae.serving.batching import Batcher, QueueFull
from dae.serving.servable import ServableManager, ServingError, Signature

DEFAULT_SIGNATURE = "serving_default"


def invalid(message: str) -> ServingError:
    return ServingError("INVALID_ARGUMENT", message)


def _cast(name: str, value: np.ndarray, dtype: np.dtype) -> np.ndarray:
    kind = value.dtype.kind
    if kind in "OUSV" or (kind == "b" and dtype.kind != "b"):
        raise invalid(f"input '{name}' must be numeric {dtype.name}, got non-numeric values")
    if kind == "c" or (dtype.kind in "iu" and kind == "f"):
        raise invalid(f"input '{name}' must be {dtype.name}, got {value.dtype.name}")
    return value.astype(dtype, copy=False)


def validate_inputs(
    sig: Signature, inputs: dict[str, np.ndarray], input_range: tuple[float, float] | None
) -> dict[str, np.ndarray]:
    """Inputs checked and cast to the signature's dtypes, or an INVALID_ARGUMENT."""
    expected = ", ".join(sig.inputs)
    for name in inputs:
        if name not in sig.inputs:
            raise invalid(f"unknown input '{name}'; signature '{sig.name}' takes: {expected}")
    out = {}
    batch = None
    for name, info in sig.inputs.items():
        if name not in inputs:
            raise invalid(f"missing input '{name}'; signature '{sig.name}' takes: {expected}")
        value = _cast(name, np.asarray(inputs[name]), info.dtype)
        if value.ndim == 0 or value.shape[0] == 0:
            raise invalid(f"input '{name}' is an empty batch")
        if info.shape is not None:
            want = "[" + ", ".join("N" if d is None else str(d) for d in info.shape) + "]"
            if value.ndim != len(info.shape) or any(
                d is not None and d != got for d, got in zip(info.shape, value.shape, strict=True)
            ):
                raise invalid(f"input '{name}' has shape {list(value.shape)}, expected {want}")
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

    def __init__(self, manager: ServableManager, batcher: Batcher | None = None):
        self.manager = manager
        self.batcher = batcher
        self.counts: Counter[str] = Counter()  # Predict outcomes by status code name

    def metrics(self) -> str:
        """Prometheus text, in the spirit of TF Serving's /monitoring/prometheus/metrics."""
        lines = ["# TYPE dae_serving_request_count counter"]
        for code, n in sorted(self.counts.items()):
            lines.append(
                f'dae_serving_request_count{{model="{self.manager.name}",status="{code}"}} {n}'
            )
        if self.batcher is not None:
            lines += [
                "# TYPE dae_serving_batches_total counter",
                f"dae_serving_batches_total {self.batcher.batches_run}",
                "# TYPE dae_serving_batched_rows_total counter",
                f"dae_serving_batched_rows_total {self.batcher.rows_run}",
            ]
        return "\n".join(lines) + "\n"

    def servable(self, model: str, version: int | None):
        if model != self.manager.name:
            raise ServingError("NOT_FOUND", f"Servable not found for request: Latest({model})")
        return self.manager.get(version)

    def signature(self, servable, name: str | None) -> Signature:
        name = name or DEFAULT_SIGNATURE
        if name not in servable.signatures:
            known = ", ".join(sorted(servable.signatures))
            raise invalid(f"Serving signature name: '{name}' not found (signatures: {known})")
        return servable.signatures[name]

    async def predict(
        self, model: str, version: int | None, signature: str | None, inputs: dict
    ) -> tuple[object, Signature, dict[str, np.ndarray]]:
        try:
            result = await self._predict(model, version, signature, inputs)
        except ServingError as e:
            self.counts[e.code] += 1
            raise
        except Exception:
            self.counts["INTERNAL"] += 1
            raise
        self.counts["OK"] += 1
        return result

    async def _predict(self, model, version, signature, inputs):
        servable = self.servable(model, version)
        sig = self.signature(servable, signature)
        arrays = validate_inputs(sig, inputs, servable.input_ranges.get(sig.name))
        if self.batcher is not None and len(arrays) == 1:
            ((name, rows),) = arrays.items()
            key = (servable.version, id(servable), sig.name, rows.shape[1:], rows.dtype.str)
            try:
                out = await self.batcher.submit(
                    key, lambda r: servable.run(sig.name, {name: r}), rows
                )
            except QueueFull as e:
                raise ServingError("RESOURCE_EXHAUSTED", str(e)) from None
        else:
            loop = asyncio.get_running_loop()
            out = await loop.run_in_executor(None, servable.run, sig.name, arrays)
        return servable, sig, out
