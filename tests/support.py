"""Helpers shared by tests: tiny datasets, the console script; a real `dae serve` (Server)
is the package's, which the benchmarks use too."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np

from dae.artifacts import SCHEMA_FILE, write_json, write_shards
from dae.serving.model_server.process import DAE, copy_version, free_port  # noqa: F401
from dae.serving.model_server.process import ModelServerProcess as Server  # noqa: F401


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


def dae(*args, check=True, timeout=600):
    """The console script, as a user runs it."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run([DAE, *args], capture_output=True, text=True, env=env, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"dae {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return proc


def copy_root(src: Path, dst: Path) -> Path:
    """A copy of a pipeline root whose metadata store points at the copy, so that runs in
    it take their cache hits from the copied artifacts (the original stays untouched)."""
    import sqlalchemy as sa

    from dae.pipeline.metadata import MetadataStore, default_url

    shutil.copytree(src, dst, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".lock"))
    store = MetadataStore(default_url(dst))
    with store.engine.begin() as c:
        c.execute(
            sa.text("UPDATE artifacts SET uri = replace(uri, :old, :new)"),
            {"old": str(src), "new": str(dst)},
        )
    return dst


def tiny_servable(base: Path, family: str = "dense", epochs: int = 2, seed: int = 0) -> Path:
    """A tiny denoiser of `family` (default hyperparameters), fitted for a few steps to
    denoise `digit_like` images and pushed under `base` as its next version, as push does
    (a VAE with its encode and decode signatures): the version's path. Seconds, not a run."""
    import keras

    from dae.components import models, vae
    from dae.serving.format import export

    keras.utils.set_random_seed(seed)
    images, _ = digit_like(256, seed=seed + 5)
    clean = images.astype(np.float32) / 255
    rng = np.random.default_rng(seed)
    noisy = np.clip(clean + rng.normal(0, 0.3, clean.shape), 0, 1).astype(np.float32)
    shape = clean.shape[1:]
    mean, std = float(clean.mean()), float(clean.std())
    trainer = models.build_model(models.hyperparameters(), family, shape, mean, std)
    trainer.fit(noisy, clean, epochs=epochs, batch_size=64, verbose=0)
    model = models.deployable(trainer)
    _, path = export.push(model, base, vae_parts=vae.parts(model))
    return path
