"""dae.imaging's numpy metrics are the numbers TensorFlow gives (the evaluator's headline
figures before they moved here), image by image over a batch."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from dae import imaging


def test_per_image_metrics_are_tensorflows():
    import keras
    import tensorflow as tf

    rng = np.random.default_rng(0)
    clean = imaging.to_8bit(rng.random((6, 28, 28, 1)) * (rng.random((6, 28, 28, 1)) < 0.3))
    pred = imaging.corrupt(clean, "gaussian", 0.2, rng)
    pred[0] = clean[0]  # an exact copy: PSNR capped, SSIM 1
    pred[1, :3] = 0.0  # pixels at exactly 0 and 1: cross-entropy's clip
    got = imaging.per_image(pred, clean, batch=4)
    want_bce = keras.ops.mean(keras.losses.binary_crossentropy(clean, pred), axis=(1, 2))
    assert got["psnr"][0] == imaging.PSNR_CAP and got["ssim"][0] == pytest.approx(1.0)
    assert got["psnr"][1:] == pytest.approx(tf.image.psnr(pred, clean, 1.0).numpy()[1:], abs=1e-4)
    assert got["ssim"] == pytest.approx(tf.image.ssim(pred, clean, 1.0).numpy(), abs=1e-5)
    assert got["mse"] == pytest.approx(np.mean((pred - clean) ** 2, axis=(1, 2, 3)), rel=1e-6)
    assert got["bce"] == pytest.approx(np.asarray(want_bce), rel=1e-5)


def test_principal_axes_point_the_same_way_whatever_the_svd_chose():
    rng = np.random.default_rng(1)
    z = rng.normal(0, 1, (300, 4)) * [3, 2, 0.1, 0.1]
    mean, axes, std = imaging.pca_2d(z)
    _, flipped, _ = imaging.pca_2d(-z)
    assert np.allclose(axes, flipped) and (axes.sum(axis=1) > 0).all()
    shares = imaging.variance_shares(z, std)
    assert shares[0] > shares[1] > 0 and sum(shares) == pytest.approx(1.0, abs=0.01)


def test_a_single_level_corrupts_as_it_always_did():
    """Pinned to the bytes corrupt gave before levels could be drawn (commit bd1682a)."""
    image = (np.arange(28 * 28).reshape(28, 28, 1) * 7 % 256).astype(np.float32) / 255.0
    batch = np.stack([image, image[::-1], image[:, ::-1]])
    digest = hashlib.sha256()
    for kind in imaging.KINDS:
        digest.update(imaging.corrupt(batch, kind, 0.3, np.random.default_rng(5)).tobytes())
    assert digest.hexdigest() == (
        "cdb3cafd00c87723f885a7efe98e8b0b0174cdca59b28fc4b7ae03dd9365b978"
    )


@pytest.mark.parametrize("kind", imaging.KINDS)
def test_each_image_of_a_batch_gets_its_own_level(kind):
    levels = np.array([0.0, 0.05, 0.1, 0.2])  # gaussian: little clipped on the grey
    clean = np.full((4, 128, 128, 1), 128 / 255, np.float32)  # an 8-bit grey, never 0 or 1
    noisy = imaging.corrupt(clean, kind, levels.reshape(4, 1, 1, 1), np.random.default_rng(3))
    np.testing.assert_array_equal(noisy[0], clean[0])  # level 0: untouched
    if kind == "gaussian":
        amount = np.std(noisy - clean, axis=(1, 2, 3))
    else:  # the fraction of pixels hit (salt, pepper or 0: never the grey)
        amount = np.mean(noisy != clean, axis=(1, 2, 3))
    assert amount == pytest.approx(levels, rel=0.05, abs=0.006)
