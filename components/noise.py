"""Corruptions a denoiser is scored on (shared by evaluate and the quality benchmark; not a
stage). Same definitions as the transform's training noise, applied to a whole batch."""

from __future__ import annotations

import numpy as np

KINDS = ("gaussian", "salt_pepper", "mask")


def corrupt(clean: np.ndarray, kind: str, level: float, rng: np.random.Generator) -> np.ndarray:
    """`clean` in [0, 1] with noise of `kind`: gaussian of stddev `level`, salt and pepper
    on a `level` fraction of pixels, or a `level` fraction of pixels masked to 0. Rounded to
    8 bits, as the transform stores noisy images and as an 8-bit source would send them."""
    if kind == "gaussian":
        noisy = clean + rng.normal(0.0, level, clean.shape)
    elif kind == "salt_pepper":
        hit = rng.random(clean.shape) < level
        noisy = np.where(hit, (rng.random(clean.shape) < 0.5).astype(np.float32), clean)
    elif kind == "mask":
        noisy = np.where(rng.random(clean.shape) < level, 0.0, clean)
    else:
        raise ValueError(f"unknown noise kind {kind!r} (known: {', '.join(KINDS)})")
    return (np.round(np.clip(noisy, 0.0, 1.0) * 255.0) / 255.0).astype(np.float32)


LEVELS = {"gaussian": "stddev", "salt_pepper": "salt_pepper", "mask": "mask_fraction"}


def configured(noise) -> tuple[str, float]:
    """(kind, level) of the pipeline's `noise` config section."""
    return noise.kind, getattr(noise, LEVELS[noise.kind])


def parameter_paths(noise) -> tuple[str, ...]:
    """The config values a noise section's effect depends on: its kind and that kind's
    level (the other kinds' levels have no effect)."""
    return ("noise.kind", f"noise.{LEVELS[noise.kind]}")
