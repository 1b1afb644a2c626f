"""The explorer's pixel work in numpy: the three corruptions, PSNR and SSIM, PCA of latent
codes, uploads to model input. Serving may not import components, so the corruptions are
written again here, with the same definitions as `dae.components.noise.corrupt`."""

from __future__ import annotations

import io

import numpy as np

KINDS = ("gaussian", "salt_pepper", "mask", "none")  # none: the image is noisy already
PSNR_CAP = 100.0  # as evaluate caps it: an exact copy has infinite PSNR


class ImageError(ValueError):
    """An image the explorer cannot use; one line for the page."""


def corrupt(clean: np.ndarray, kind: str, level: float, seed: int) -> np.ndarray:
    """`clean` in [0, 1] with noise of `kind` at `level`, rounded to 8 bits. The random
    draws depend on the seed only, so moving the level slider grows the same noise."""
    if kind not in KINDS:
        raise ImageError(f"unknown corruption '{kind}' (known: {', '.join(KINDS)})")
    if not 0.0 <= level <= 1.0:
        raise ImageError(f"the corruption level must be in [0, 1], got {level:g}")
    rng = np.random.default_rng(seed)
    if kind == "gaussian":
        noisy = clean + level * rng.standard_normal(clean.shape)
    elif kind == "salt_pepper":
        hit, salt = rng.random(clean.shape) < level, rng.random(clean.shape) < 0.5
        noisy = np.where(hit, salt.astype(np.float32), clean)
    elif kind == "mask":
        noisy = np.where(rng.random(clean.shape) < level, 0.0, clean)
    else:
        noisy = clean
    return (np.round(np.clip(noisy, 0.0, 1.0) * 255.0) / 255.0).astype(np.float32)


def psnr(image: np.ndarray, clean: np.ndarray) -> float:
    mse = float(np.mean((np.asarray(image, np.float64) - clean) ** 2))
    return PSNR_CAP if mse == 0 else min(PSNR_CAP, 10.0 * np.log10(1.0 / mse))


def _gaussian_filter(x: np.ndarray, size: int, sigma: float = 1.5) -> np.ndarray:
    """'valid' separable Gaussian filter over H and W of an HWC array."""
    t = np.arange(size) - (size - 1) / 2
    k = np.exp(-(t**2) / (2 * sigma**2))
    k /= k.sum()
    h, w = x.shape[0] - size + 1, x.shape[1] - size + 1
    rows = sum(k[i] * x[i : i + h] for i in range(size))
    return sum(k[j] * rows[:, j : j + w] for j in range(size))


def ssim(image: np.ndarray, clean: np.ndarray) -> float:
    """tf.image.ssim(max_val=1) in numpy (11x11 Gaussian window, sigma 1.5, 'valid'), so
    the page's numbers are the report's; the window shrinks for images under 11 pixels."""
    x, y = np.asarray(image, np.float64), np.asarray(clean, np.float64)
    size = min(11, x.shape[0], x.shape[1])
    c1, c2 = 0.01**2, 0.03**2
    mx, my = _gaussian_filter(x, size), _gaussian_filter(y, size)
    sxx = _gaussian_filter(x * x, size) - mx * mx
    syy = _gaussian_filter(y * y, size) - my * my
    sxy = _gaussian_filter(x * y, size) - mx * my
    luminance = (2 * mx * my + c1) / (mx * mx + my * my + c1)
    contrast = (2 * sxy + c2) / (sxx + syy + c2)
    return float(np.mean(luminance * contrast))


def pca2(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[float]]:
    """(2-D points, mean, axes [2, Z], explained variance ratios) of latent codes [N, Z].
    Two dimensions are their own plane (no rotation); one dimension gets a zero axis."""
    codes = np.asarray(codes, np.float64)
    z = codes.shape[1]
    mean = codes.mean(axis=0)
    if z <= 2:
        axes = np.eye(2, z)
        mean = np.zeros(z)
        var = codes.var(axis=0)
        ratios = list(var / var.sum()) if var.sum() > 0 else [0.0] * z
        return codes @ axes.T, mean, axes, [float(r) for r in ratios] + [0.0] * (2 - z)
    _, s, vt = np.linalg.svd(codes - mean, full_matrices=False)
    axes = vt[:2] * np.sign(vt[:2].sum(axis=1, keepdims=True) + 1e-12)  # a stable sign
    ratios = (s**2 / max(float((s**2).sum()), 1e-12))[:2]
    return (codes - mean) @ axes.T, mean, axes, [float(r) for r in ratios]


def decode_upload(data: bytes, shape: tuple[int, int, int]) -> np.ndarray:
    """Any image PIL reads -> uint8 HWC of the model's shape: centred on a square, resized,
    gray or RGB as the model wants, inverted when its background is light (the datasets
    are light strokes on black). Raises ImageError."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise ImageError("the upload is empty")
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            im = im.convert("RGBA" if shape[2] == 3 else "LA")
    except UnidentifiedImageError:
        raise ImageError("the upload is not an image (PNG, JPEG, GIF, BMP, WebP ...)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ImageError(f"the upload is not a readable image ({reason})") from None
    pixels = np.asarray(im, np.float32) / 255.0
    alpha = pixels[..., -1:]
    color = pixels[..., :-1]
    if float(alpha.min()) < 1.0:  # transparent: what shows is the strokes over black
        color = color * alpha
    elif float(color.mean()) > 0.5:
        color = 1.0 - color
    h, w = color.shape[:2]
    side = max(h, w)
    square = np.zeros((side, side, color.shape[2]), np.float32)
    square[(side - h) // 2 : (side - h) // 2 + h, (side - w) // 2 : (side - w) // 2 + w] = color
    square = np.round(square * 255).astype(np.uint8)
    out = Image.fromarray(square if shape[2] == 3 else square[..., 0])
    out = out.resize((shape[1], shape[0]), Image.Resampling.LANCZOS)
    arr = np.asarray(out, np.uint8)
    return arr[..., None] if arr.ndim == 2 else arr
