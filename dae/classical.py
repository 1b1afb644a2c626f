"""Classical denoisers, the baselines a learned one has to beat: they cost nothing to run and
need no training, and they are blind to the noise level, as their users are. numpy only, so
any layer (evaluate, the benchmarks, serving's explorer) may use them."""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def median_filter(images: np.ndarray, size: int = 3, batch: int = 256) -> np.ndarray:
    """Median of each pixel's size x size neighbourhood, per channel, of images [N, H, W, C].

    The edges are mirrored as scipy.ndimage.median_filter's default mode 'reflect' does
    (d c b a | a b c d | d c b a, numpy's 'symmetric'), so the two agree pixel for pixel.
    Done `batch` images at a time: the windows' copy is size**2 times the images."""
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"expected images [N, H, W, C], got shape {images.shape}")
    if size < 1 or size % 2 == 0:
        raise ValueError(f"the window's size must be odd and positive, got {size}")
    r = size // 2
    out = np.empty_like(images)
    for i in range(0, len(images), batch):
        padded = np.pad(images[i : i + batch], ((0, 0), (r, r), (r, r), (0, 0)), "symmetric")
        windows = sliding_window_view(padded, (size, size), axis=(1, 2))
        out[i : i + batch] = np.median(windows, axis=(-2, -1))
    return out
