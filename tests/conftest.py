"""Shared fixtures: tiny datasets in temp dirs and stage contexts around them."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from components.artifacts import SCHEMA_FILE, StageContext, write_json, write_shards  # noqa: E402
from pipeline.config import load_config  # noqa: E402


def digit_like(n: int, shape=(28, 28, 1), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images of bright bars on black, one bar position per label: learnable structure."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    images = np.zeros((n, *shape), np.uint8)
    h, w = shape[:2]
    for i, label in enumerate(labels):
        col = 2 + int(label) * (w - 4) // 10
        images[i, 3 : h - 3, col : col + 3] = rng.integers(180, 256)
    return images, labels


def write_examples(artifact: Path, splits: dict[str, tuple[np.ndarray, np.ndarray]], shards=1):
    """An examples artifact in ingest's format."""
    artifact.mkdir(parents=True, exist_ok=True)
    for split, (images, labels) in splits.items():
        write_shards(artifact, split, images, labels, shards)
    first = next(iter(splits.values()))[0]
    schema = {
        "shape": list(first.shape[1:]),
        "dtype": str(first.dtype),
        "splits": {k: len(v[0]) for k, v in splits.items()},
    }
    write_json(artifact / SCHEMA_FILE, schema)
    return artifact


@pytest.fixture
def tiny_examples(tmp_path) -> Path:
    return write_examples(
        tmp_path / "examples",
        {
            "train": digit_like(96, seed=1),
            "eval": digit_like(32, seed=2),
            "test": digit_like(32, seed=3),
        },
    )


@pytest.fixture
def config():
    return load_config(None, "smoke", [])


@pytest.fixture
def make_ctx(tmp_path, config):
    def make(inputs: dict[str, Path], outputs: tuple[str, ...], cfg=None) -> StageContext:
        outs = {name: tmp_path / "out" / name for name in outputs}
        for p in outs.values():
            p.mkdir(parents=True, exist_ok=True)
        return StageContext(
            cfg or config, inputs, outs, "test-run", tmp_path, tmp_path / "serving", lambda m: None
        )

    return make
