"""dae.imaging's numpy metrics are the numbers TensorFlow gives (the evaluator's headline
figures before they moved here), image by image over a batch."""

from __future__ import annotations

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
