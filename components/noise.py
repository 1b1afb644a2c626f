"""The pipeline's noise config read as a corruption of `dae.imaging` (shared by evaluate, the
explorer and the quality benchmark; not a stage). Same definitions as the transform's
training noise, applied to a whole batch."""

from __future__ import annotations

LEVELS = {"gaussian": "stddev", "salt_pepper": "salt_pepper", "mask": "mask_fraction"}


def configured(noise) -> tuple[str, float]:
    """(kind, level) of the pipeline's `noise` config section."""
    return noise.kind, getattr(noise, LEVELS[noise.kind])


def parameter_paths(noise) -> tuple[str, ...]:
    """The config values a noise section's effect depends on: its kind and that kind's
    level (the other kinds' levels have no effect)."""
    return ("noise.kind", f"noise.{LEVELS[noise.kind]}")
