"""bench/classical_denoisers.py on tiny arrays: the tuning, and the batched denoisers."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

_PATH = Path(__file__).resolve().parents[2] / "bench" / "classical_denoisers.py"
_spec = importlib.util.spec_from_file_location("classical_denoisers", _PATH)
cd = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cd)


def shift(noisy, p):
    return noisy - p


def test_tune_picks_the_grid_parameter_of_the_best_psnr():
    clean = np.random.default_rng(0).uniform(0.0, 0.5, (3, 8, 8, 1)).astype(np.float32)
    noisy = clean + 0.2
    best, scores = cd.tune(shift, [0.4, 0.0, 0.2, 0.1], noisy, clean)
    assert best == 0.2
    assert int(np.argmax(scores)) == 2 and scores[2] > max(scores[:2] + scores[3:])
    assert scores[1] == pytest.approx(10 * np.log10(1 / 0.2**2), abs=1e-3)


def constant(noisy, p):
    return np.full_like(noisy, p)


def test_the_sweep_tunes_on_the_held_out_images_and_scores_the_test_ones(monkeypatch):
    """A constant image is best at the clean images' value: 0.2 on the held-out images,
    0.6 on the test ones. The held-out images' choice is the one scored."""
    monkeypatch.setitem(cd.DENOISERS, "constant", (constant, "value", lambda _: [0.2, 0.4, 0.6]))
    heldout = np.full((4, 8, 8, 1), 0.2, np.float32)
    test = np.full((2, 8, 8, 1), 0.6, np.float32)
    results = cd.sweep(heldout, test, [0.1, 0.3], names=["constant"], log=lambda _: None)
    assert [r["parameter"] for r in results["constant"]] == [0.2, 0.2]
    assert all(r["edge"] for r in results["constant"])
    for r in results["constant"]:
        assert r["psnr"] == pytest.approx(10 * np.log10(1 / 0.4**2), abs=1e-3)
    noisy_psnr = [r["psnr"] for r in results["noisy input"]]
    assert noisy_psnr[0] > noisy_psnr[1]  # more noise, lower PSNR
    lines = cd.table(results)
    assert any(line.startswith("constant value") and line.count("*") == 2 for line in lines)


LEVEL = 0.05


def _images(n=3, size=16):
    clean = np.zeros((n, size, size, 1), np.float32)
    clean[:, 4:12, 5:11] = 1.0
    noisy = cd.corrupt(clean, "gaussian", LEVEL, np.random.default_rng(1))
    # A range of its own: BM3D's block matching caps distances at a multiple of the range
    # (stacked with the others, this image is denoised differently).
    noisy[-1] *= 0.5
    return noisy


@pytest.mark.parametrize("name", list(cd.DENOISERS))
def test_each_image_of_a_batch_is_denoised_on_its_own(name):
    denoise, _, grid = cd.DENOISERS[name]
    noisy = _images()
    parameter = grid(LEVEL)[len(grid(LEVEL)) // 2]
    batch = denoise(noisy, parameter)
    assert batch.shape == noisy.shape
    alone = np.concatenate([denoise(noisy[i : i + 1], parameter) for i in range(len(noisy))])
    np.testing.assert_allclose(batch, alone, atol=1e-5)
    assert np.abs(batch - noisy).mean() > 0.005  # it did denoise


def test_bm3d_is_the_librarys_bm3d_of_each_image():
    import bm3d

    noisy = _images()
    ours = cd.bm3d(noisy, LEVEL)
    theirs = np.stack([bm3d.bm3d(z[..., 0], LEVEL) for z in noisy])[..., None]
    np.testing.assert_allclose(ours, theirs, atol=1e-4)
