"""Classical denoisers over the evaluator's sweep of gaussian noise: the noisy input, the 3x3
median (dae.classical, the evaluator's baseline, no parameter), total variation (Chambolle's,
its weight), non-local means (its filtering strength h) and BM3D (its noise stddev), each
parameter tuned for each level on held-out images (the first images of the train split,
never the test images scored) by mean PSNR over a grid of multiples of the level. Noise is
the evaluator's (dae.imaging.corrupt: 8-bit, clipped), so are the metrics; outputs are
clipped to [0, 1] as a served image would be.

bm3d and scikit-image are bench-only dependencies (requirements-dev.lock): the product never
imports them. `bench/quality.py --models classical` prints these tables alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from dae import compat
from dae.classical import median_filter
from dae.imaging import corrupt, image_metrics, psnr

# Each level's grid: the level times 2^(k/2), k = -6 .. 3 (0.125x .. 2.83x). Low multiples:
# clipping to [0, 1] leaves much less noise than the level at high levels.
FACTORS = tuple(float(2.0 ** (k / 2)) for k in range(-6, 4))
HELDOUT_SEED, TEST_SEED = 3000, 2000  # the noise of each split, the same draws at every level
MEDIAN_SIZE = 3


def total_variation(noisy: np.ndarray, weight: float) -> np.ndarray:
    from skimage.restoration import denoise_tv_chambolle

    # channel_axis=0: each image on its own, in one call.
    return denoise_tv_chambolle(noisy[..., 0], weight=weight, channel_axis=0)[..., None]


def nl_means(noisy: np.ndarray, h: float) -> np.ndarray:
    """scikit-image's defaults otherwise: 7x7 patches searched within 11 pixels, fast mode."""
    from skimage.restoration import denoise_nl_means

    return np.stack([denoise_nl_means(x[..., 0], h=h) for x in noisy])[..., None]


def bm3d(noisy: np.ndarray, sigma_psd: float) -> np.ndarray:
    """bm3d.bm3d (profile 'np', one thread: reproducible) of each image of [N, H, W, 1].

    Its first stage (hard thresholding) has a fixed cost a call that dwarfs a small image's
    work (bench/quality.py's sweep would take hours): it runs as one bm4d call on the images
    stacked as a volume, matching blocks within each image only (the same search window,
    none across the stack). Its block matching is capped by the input's range, so images are
    stacked by their range. That and the second stage, per image on the first's estimate,
    are bm3d's own to float precision."""
    import bm3d as bm3d_lib
    import bm4d

    profile = bm3d_lib.BM3DProfile()
    profile.num_threads = 1
    volume_profile = compat.bm3d_volume_profile(profile)  # bm3d's own mapping to a bm4d one
    volume_profile.search_window_ht = (*volume_profile.search_window_ht[:2], 0)
    images = np.asarray(noisy[..., 0], np.float32)
    spans = images.max(axis=(1, 2)) - images.min(axis=(1, 2))
    pilot = np.empty_like(images)
    for span in np.unique(spans):
        same = np.flatnonzero(spans == span)
        stack = np.transpose(images[same], (1, 2, 0))
        first = bm4d.bm4d(stack, sigma_psd, volume_profile, bm4d.BM4DStages.HARD_THRESHOLDING)
        pilot[same] = np.transpose(first, (2, 0, 1))
    out = [
        bm3d_lib.bm3d(z, sigma_psd, profile, stage_arg=p)
        for z, p in zip(images, pilot, strict=True)
    ]
    return np.stack(out)[..., None].astype(np.float32)


Denoiser = Callable[[np.ndarray, float], np.ndarray]
# name: (denoiser, its parameter's name, the grid at a level)
DENOISERS: dict[str, tuple[Denoiser, str, Callable[[float], Sequence[float]]]] = {
    "median 3x3": (median_filter, "size", lambda _: (MEDIAN_SIZE,)),
    "TV": (total_variation, "weight", lambda s: [s * f for f in FACTORS]),
    "NL-means": (nl_means, "h", lambda s: [s * f for f in FACTORS]),
    "BM3D": (bm3d, "sigma", lambda s: [s * f for f in FACTORS]),
}


def denoised(denoise: Denoiser, noisy: np.ndarray, parameter: float) -> np.ndarray:
    return np.clip(denoise(noisy, parameter), 0.0, 1.0)


def tune(denoise: Denoiser, grid: Sequence[float], noisy, clean) -> tuple[float, list[float]]:
    """The parameter of `grid` with the best mean PSNR on (noisy, clean), the first of ties;
    and each parameter's PSNR."""
    scores = [float(psnr(denoised(denoise, noisy, p), clean).mean()) for p in grid]
    return grid[int(np.argmax(scores))], scores


def noisy(clean: np.ndarray, sigma: float, seed: int = TEST_SEED) -> np.ndarray:
    return corrupt(clean, "gaussian", sigma, np.random.default_rng(seed))


def scored(predict: Callable[[np.ndarray], np.ndarray], test, sigmas) -> list[dict]:
    """A model's row of the sweep, {sigma, psnr, ssim}: `predict` of the test images noised
    as the denoisers' are."""
    rows = []
    for sigma in sigmas:
        m = image_metrics(predict(noisy(test, sigma)), test)
        rows.append({"sigma": sigma, "psnr": m["psnr"], "ssim": m["ssim"]})
    return rows


def sweep(heldout: np.ndarray, test: np.ndarray, sigmas: Sequence[float], names=None, log=print):
    """{name: [{sigma, psnr, ssim, parameter, edge}]} for the noisy input and each denoiser
    of `names` (default all): tuned on `heldout`, scored on `test`, clean images [N, H, W, 1]
    in [0, 1]. `edge`: the tuned parameter is the grid's first or last (the optimum may lie
    beyond it)."""
    names = list(DENOISERS) if names is None else names
    out = {"noisy input": scored(lambda x: x, test, sigmas), **{n: [] for n in names}}
    for sigma in sigmas if names else []:
        noisy_h, noisy_t = noisy(heldout, sigma, HELDOUT_SEED), noisy(test, sigma)
        for name in names:
            denoise, _, grid_at = DENOISERS[name]
            grid = list(grid_at(sigma))
            best = grid[0] if len(grid) == 1 else tune(denoise, grid, noisy_h, heldout)[0]
            m = image_metrics(denoised(denoise, noisy_t, best), test)
            edge = len(grid) > 1 and best in (grid[0], grid[-1])
            row = {"sigma": sigma, "psnr": m["psnr"], "ssim": m["ssim"], "parameter": best}
            out[name].append(row | {"edge": edge})
            log(f"  sigma {sigma}: {name} ({DENOISERS[name][1]} {best:.3g}) {m['psnr']:.2f} dB")
    return out


def table(results: dict[str, list[dict]]) -> list[str]:
    """PSNR, SSIM and the tuned parameter, a column per level (* : at the grid's edge)."""
    sigmas = [r["sigma"] for r in next(iter(results.values()))]
    head = f"{'':<24}" + "".join(f"{s:>8g}" for s in sigmas)
    lines = [f"{'PSNR (dB)':<24}" + head[24:]]
    lines += [
        f"{n:<24}" + "".join(f"{r['psnr']:8.2f}" for r in rows) for n, rows in results.items()
    ]
    lines += ["", f"{'SSIM':<24}" + head[24:]]
    lines += [
        f"{n:<24}" + "".join(f"{r['ssim']:8.3f}" for r in rows) for n, rows in results.items()
    ]
    tuned = [(n, rows) for n, rows in results.items() if n in DENOISERS and rows]
    lines += ["", f"{'tuned parameter':<24}" + head[24:]] if tuned else []
    for name, rows in tuned:
        cells = "".join(f"{r['parameter']:7.3g}{'*' if r['edge'] else ' '}" for r in rows)
        lines.append(f"{name + ' ' + DENOISERS[name][1]:<24}" + cells)
    return lines
