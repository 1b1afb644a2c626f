"""Validate (TFX's StatisticsGen + ExampleValidator): statistics per split, stop on anomalies.

A run that trains on broken data pushes a broken model on schedule; better to stop here
with a message that names the problem.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dae.artifacts import SPLITS, Examples, ExampleStatistics, read_schema, read_split, write_json
from dae.component import Spec, StageContext, StageError, StageResult

IMAGE_DTYPES = ("uint8",)
MIN_SIDE = 11  # SSIM's window


# ---- pure core -------------------------------------------------------------------------


def compute_statistics(images: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Statistics of one split; images as float in [0, 1] (NaN kept, so it can be found)."""
    finite = images[np.isfinite(images)] if images.size else images
    values, counts = np.unique(labels, return_counts=True)
    return {
        "count": int(len(images)),
        "shape": list(images.shape[1:]),
        "min": float(finite.min()) if finite.size else None,
        "max": float(finite.max()) if finite.size else None,
        "mean": float(finite.mean()) if finite.size else None,
        "std": float(finite.std()) if finite.size else None,
        "nan_count": int(np.isnan(images).sum()),
        "label_counts": {str(int(v)): int(c) for v, c in zip(values, counts, strict=True)},
    }


def find_anomalies(
    statistics: dict[str, dict[str, Any]],
    dtype: str,
    min_examples: int = 1,
    expected_mean: float | None = None,
    mean_tolerance: float = 0.05,
) -> list[str]:
    """Every reason not to train on this data, each one line; empty means go."""
    problems = []
    if dtype not in IMAGE_DTYPES:
        problems.append(f"images are {dtype}, not an image dtype ({', '.join(IMAGE_DTYPES)})")
    shapes = {tuple(s["shape"]) for s in statistics.values()}
    for shape in shapes:
        if len(shape) != 3 or shape[2] not in (1, 3) or min(shape[:2]) < MIN_SIDE:
            problems.append(
                f"image shape {list(shape)} is not [height>={MIN_SIDE}, width>={MIN_SIDE}, 1 or 3]"
            )
    if len(shapes) > 1:
        problems.append(f"splits disagree on image shape: {sorted(shapes)}")
    for split, s in statistics.items():
        if s["count"] < min_examples:
            problems.append(f"split '{split}' has {s['count']} examples (< {min_examples})")
            continue
        if s["nan_count"]:
            problems.append(f"split '{split}' has {s['nan_count']} NaN pixel values")
        if s["min"] is not None and (s["min"] < 0.0 or s["max"] > 1.0):
            problems.append(f"split '{split}' pixels span [{s['min']}, {s['max']}], not [0, 1]")
    train = statistics.get("train") or {}
    mean = train.get("mean")
    if (
        expected_mean is not None
        and mean is not None
        and abs(mean - expected_mean) > mean_tolerance
    ):
        problems.append(
            f"train pixel mean {mean:.4f} is off the expected {expected_mean} "
            f"by more than {mean_tolerance}"
        )
    return problems


# ---- artifact I/O ----------------------------------------------------------------------


def run(ctx: StageContext) -> StageResult:
    cfg = ctx.config
    examples = ctx.inputs["examples"]
    schema = read_schema(examples)
    dtype = schema.get("dtype", "uint8")
    if dtype not in IMAGE_DTYPES:  # before decoding pixels that are not pixels
        raise StageError(f"data anomaly: {find_anomalies({}, dtype)[0]}")
    stats = {}
    for split in SPLITS:
        if schema["splits"].get(split, 0) == 0:
            stats[split] = compute_statistics(np.zeros((0, *schema["shape"])), np.zeros(0))
            continue
        data = read_split(examples, split, ("image",))
        stats[split] = compute_statistics(data["image"], data["label"])
    out = ctx.outputs["statistics"]
    write_json(out / ExampleStatistics.STATISTICS, {"dtype": dtype, "splits": stats})
    anomalies = find_anomalies(
        stats,
        dtype,
        cfg.validate_.min_examples_per_split,
        cfg.validate_.expected_mean,
        cfg.validate_.mean_tolerance,
    )
    write_json(out / ExampleStatistics.ANOMALIES, anomalies)
    if anomalies:
        more = len(anomalies) - 1
        more = f" (+{more} more in {ExampleStatistics.ANOMALIES})" if more else ""
        raise StageError(f"data anomaly: {anomalies[0]}{more}")
    t = stats["train"]
    ctx.log(f"validate: train mean={t['mean']:.4f} std={t['std']:.4f}, no anomalies")
    return StageResult({"train_mean": t["mean"], "train_std": t["std"]})


SPEC = Spec(
    inputs={"examples": Examples},
    outputs={"statistics": ExampleStatistics},
    parameters=("validate",),
)
