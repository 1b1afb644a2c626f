"""Pixel arithmetic shared by the stages and the explorer (not a stage), in numpy only so
the explorer stays light: the corruptions a denoiser is scored on, the image metrics the
evaluator reports (tf.image's PSNR and SSIM definitions) and the principal plane of latent
codes. Images are floats in [0, 1], HWC or batches [..., H, W, C].
"""

from __future__ import annotations

import numpy as np

KINDS = ("gaussian", "salt_pepper", "mask")
PSNR_CAP = 100.0  # an exact reconstruction has infinite PSNR; cap it so means stay finite
EPS = 1e-7  # Keras' clip for cross-entropy: a noisy pixel of exactly 0 or 1 stays finite
_PIXELS = (-3, -2, -1)  # H, W, C


def to_8bit(x: np.ndarray) -> np.ndarray:
    """Clipped to [0, 1] and rounded to 8 bits, as an 8-bit source sends images."""
    return (np.round(np.clip(x, 0.0, 1.0) * 255.0) / 255.0).astype(np.float32)


def corrupt(
    clean: np.ndarray, kind: str, level: float | np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """`clean` in [0, 1] with noise of `kind`: gaussian of stddev `level`, salt and pepper
    on a `level` fraction of pixels, or a `level` fraction of pixels masked to 0. Rounded to
    8 bits, as the transform stores noisy images and as an 8-bit source would send them.
    The draws depend on the generator only, so a larger level grows the same noise.

    `level` is a float, or an array broadcastable against `clean` (a batch's [N, 1, 1, 1]:
    one level per image): each kind compares or scales its draws of `clean`'s shape with it
    element by element, so an image's noise is the one its own level gives."""
    if kind == "gaussian":
        noisy = clean + rng.normal(0.0, level, clean.shape)
    elif kind == "salt_pepper":
        hit = rng.random(clean.shape) < level
        noisy = np.where(hit, (rng.random(clean.shape) < 0.5).astype(np.float32), clean)
    elif kind == "mask":
        noisy = np.where(rng.random(clean.shape) < level, 0.0, clean)
    else:
        raise ValueError(f"unknown noise kind {kind!r} (known: {', '.join(KINDS)})")
    return to_8bit(noisy)


def mse(image: np.ndarray, clean: np.ndarray) -> np.ndarray:
    diff = np.asarray(image, np.float64) - np.asarray(clean, np.float64)
    return np.mean(diff**2, axis=_PIXELS)


def bce(image: np.ndarray, clean: np.ndarray) -> np.ndarray:
    """Binary cross-entropy of `image` as the probability of `clean`, nats per pixel, in
    float32 as Keras computes it (at 1 - EPS, float64 logs differ in the fourth digit)."""
    q = np.clip(np.asarray(image, np.float32), np.float32(EPS), np.float32(1.0 - EPS))
    c = np.asarray(clean, np.float32)
    terms = c * np.log(q) + (1.0 - c) * np.log(1.0 - q)
    return -np.mean(terms, axis=_PIXELS, dtype=np.float64)


def psnr(image: np.ndarray, clean: np.ndarray) -> np.ndarray:
    """tf.image.psnr(max_val=1), capped at PSNR_CAP."""
    error = mse(image, clean)
    with np.errstate(divide="ignore"):
        return np.minimum(10.0 * np.log10(1.0 / error), PSNR_CAP)


def _gaussian_filter(x: np.ndarray, size: int, sigma: float = 1.5) -> np.ndarray:
    """'valid' separable Gaussian filter over H and W of [..., H, W, C]."""
    t = np.arange(size) - (size - 1) / 2
    k = np.exp(-(t**2) / (2 * sigma**2))
    k /= k.sum()
    h, w = x.shape[-3] - size + 1, x.shape[-2] - size + 1
    rows = sum(k[i] * x[..., i : i + h, :, :] for i in range(size))
    return sum(k[j] * rows[..., :, j : j + w, :] for j in range(size))


def ssim(image: np.ndarray, clean: np.ndarray) -> np.ndarray:
    """tf.image.ssim(max_val=1): 11x11 Gaussian window, sigma 1.5, 'valid'; the window
    shrinks for images under 11 pixels a side."""
    x, y = np.asarray(image, np.float64), np.asarray(clean, np.float64)
    size = min(11, x.shape[-3], x.shape[-2])
    c1, c2 = 0.01**2, 0.03**2
    mx, my, xx, yy, xy = _gaussian_filter(np.stack([x, y, x * x, y * y, x * y]), size)
    sxx, syy, sxy = xx - mx * mx, yy - my * my, xy - mx * my
    luminance = (2 * mx * my + c1) / (mx * mx + my * my + c1)
    contrast = (2 * sxy + c2) / (sxx + syy + c2)
    return np.mean(luminance * contrast, axis=_PIXELS)


METRICS = {"mse": mse, "bce": bce, "psnr": psnr, "ssim": ssim}


def per_image(pred: np.ndarray, clean: np.ndarray, batch: int = 512) -> dict[str, np.ndarray]:
    """MSE, binary cross-entropy (nats per pixel), PSNR and SSIM of each image [N, H, W, C]."""
    out: dict[str, list] = {k: [] for k in METRICS}
    for i in range(0, len(clean), batch):
        p, c = pred[i : i + batch], clean[i : i + batch]
        for name, metric in METRICS.items():
            out[name].append(metric(p, c))
    return {k: np.concatenate(v) if v else np.zeros(0) for k, v in out.items()}


def image_metrics(pred: np.ndarray, clean: np.ndarray, batch: int = 512) -> dict[str, float]:
    """Means over images of `per_image`."""
    return {k: float(v.mean()) for k, v in per_image(pred, clean, batch).items()}


def pca_2d(z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, two principal axes as rows, their stddevs) of codes [N, Z]; z of 2 dims keeps
    its own axes. An axis points where its components sum positive, whatever the SVD chose."""
    mean = z.mean(axis=0)
    if z.shape[1] <= 2:
        axes = np.eye(2, z.shape[1])
        return mean, axes, (z - mean).std(axis=0).clip(1e-6)[:2]
    _, s, vt = np.linalg.svd(z - mean, full_matrices=False)
    axes = vt[:2] * np.sign(vt[:2].sum(axis=1, keepdims=True) + 1e-12)
    return mean, axes, s[:2] / np.sqrt(len(z))


def variance_shares(z: np.ndarray, std: np.ndarray) -> list[float]:
    """The share of the codes' total variance along each principal axis of `pca_2d`."""
    total = float(z.var(axis=0).sum())
    return [float(s**2 / total) if total > 0 else 0.0 for s in std]
