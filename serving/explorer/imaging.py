"""The explorer's pixel work: the evaluator's corruptions, PSNR and SSIM and the report's
principal plane (all from `dae.imaging`, numpy only) as the page asks for them, and uploads
to model input."""

from __future__ import annotations

import io

import numpy as np

from dae import imaging as shared

KINDS = (*shared.KINDS, "none")  # none: the image is noisy already
PSNR_CAP = shared.PSNR_CAP


class ImageError(ValueError):
    """An image the explorer cannot use; one line for the page."""


def corrupt(clean: np.ndarray, kind: str, level: float, seed: int) -> np.ndarray:
    """The evaluator's corruption of `clean` (`dae.imaging.corrupt`), checked for the page,
    seeded so moving the level slider grows the same noise."""
    if kind not in KINDS:
        raise ImageError(f"unknown corruption '{kind}' (known: {', '.join(KINDS)})")
    if not 0.0 <= level <= 1.0:
        raise ImageError(f"the corruption level must be in [0, 1], got {level:g}")
    if kind == "none":
        return shared.to_8bit(clean)
    return shared.corrupt(clean, kind, level, np.random.default_rng(seed))


def psnr(image: np.ndarray, clean: np.ndarray) -> float:
    return float(shared.psnr(image, clean))


def ssim(image: np.ndarray, clean: np.ndarray) -> float:
    return float(shared.ssim(image, clean))


def pca2(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[float]]:
    """(2-D points, mean, axes [2, Z], explained variance ratios) of latent codes [N, Z]:
    the report's principal plane. Two dimensions are their own plane, not centred (the
    page labels them z1, z2); one dimension gets a zero axis."""
    codes = np.asarray(codes, np.float64)
    mean, axes, std = shared.pca_2d(codes)
    ratios = shared.variance_shares(codes, std)
    if codes.shape[1] <= 2:
        mean = np.zeros(codes.shape[1])
    return (codes - mean) @ axes.T, mean, axes, ratios + [0.0] * (2 - len(ratios))


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
