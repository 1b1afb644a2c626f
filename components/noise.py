"""The pipeline's noise config read as a corruption of `dae.imaging` (shared by the transform
and training's fresh noise; not a stage). A level is a number, a list to draw one of for each
example, or a {min, max} range to draw from uniformly: a denoiser trained blind to the level,
as its users are."""

from __future__ import annotations

import numpy as np

from dae.imaging import corrupt

LEVELS = {"gaussian": "stddev", "salt_pepper": "salt_pepper", "mask": "mask_fraction"}


def configured(noise) -> tuple[str, float | list[float] | dict[str, float]]:
    """(kind, level) of the pipeline's `noise` config section, the level in JSON's terms (the
    transform graph records it): a number, a list of numbers or {"min": a, "max": b}."""
    level = getattr(noise, LEVELS[noise.kind])
    if isinstance(level, int | float | list):
        return noise.kind, level
    return noise.kind, {"min": level.min, "max": level.max}  # a LevelRange


def describe(kind: str, level) -> str:
    """The corruption in words, for a log line: "gaussian noise, level in [0, 0.9]"."""
    if isinstance(level, dict):
        amount = f"in [{level['min']:g}, {level['max']:g}]"
    elif isinstance(level, list):
        amount = "one of " + ", ".join(f"{v:g}" for v in level)
    else:
        amount = f"{level:g}"
    return f"{kind} noise, level {amount}"


def draw(level, rng: np.random.Generator, n: int | None = None):
    """A level for one image (n None) or for each of n images (an array [n, 1, 1, 1], to
    broadcast against a batch): a list's member or a range's value drawn from `rng`. A plain
    number is returned as is, with no draw, so a single level's noise is what it was before
    levels could be drawn."""
    shape = None if n is None else (n, 1, 1, 1)
    if isinstance(level, dict):
        drawn = rng.uniform(level["min"], level["max"], shape)
    elif isinstance(level, list):
        drawn = rng.choice(np.asarray(level, np.float64), shape)
    else:
        return level
    return drawn if n is not None else float(drawn)


def corrupt_image(clean: np.ndarray, kind: str, level, rng: np.random.Generator) -> np.ndarray:
    """One image [H, W, C]: its level drawn from `rng`, then its noise from the same `rng`."""
    return corrupt(clean, kind, draw(level, rng), rng)


def corrupt_batch(clean: np.ndarray, kind: str, level, rng: np.random.Generator) -> np.ndarray:
    """A batch [N, H, W, C]: a level drawn for each image from `rng`, then the noise."""
    return corrupt(clean, kind, draw(level, rng, len(clean)), rng)


def parameter_paths(noise) -> tuple[str, ...]:
    """The config values a noise section's effect depends on: its kind and that kind's
    level (the other kinds' levels have no effect)."""
    return ("noise.kind", f"noise.{LEVELS[noise.kind]}")
