"""The classical baseline: a median filter that mirrors its edges as scipy's does."""

from __future__ import annotations

import numpy as np
import pytest

from dae import classical


def test_a_3x3_median_by_hand_with_mirrored_edges():
    image = np.arange(1, 10, dtype=np.float32).reshape(1, 3, 3, 1)
    # Padded d c b a | a b c d: the corner's window is 1 1 2 / 1 1 2 / 4 4 5, median 2
    # (zero padding would give 0 there).
    want = np.array([[2, 3, 3], [4, 5, 6], [7, 7, 8]], np.float32)
    assert np.array_equal(classical.median_filter(image)[0, ..., 0], want)


def test_an_isolated_impulse_is_removed_and_channels_stay_apart():
    images = np.zeros((2, 6, 7, 3), np.float32)
    images[..., 1] = 0.5
    images[0, 2, 3, 0] = 1.0  # salt in channel 0 only
    out = classical.median_filter(images)
    assert out.shape == images.shape and out.dtype == np.float32
    assert not out[..., 0].any() and (out[..., 1] == 0.5).all() and not out[..., 2].any()


def test_it_is_scipys_median_filter_whatever_the_batch():
    ndimage = pytest.importorskip("scipy.ndimage", reason="scipy is not installed")
    rng = np.random.default_rng(0)
    images = rng.random((5, 9, 8, 2)).astype(np.float32)
    want = ndimage.median_filter(images, size=(1, 3, 3, 1))
    assert np.array_equal(classical.median_filter(images, batch=2), want)
    want5 = ndimage.median_filter(images, size=(1, 5, 5, 1))
    assert np.array_equal(classical.median_filter(images, size=5), want5)


@pytest.mark.parametrize(
    "shape, size, needle",
    [((3, 3, 1), 3, r"expected images \[N, H, W, C\]"), ((1, 3, 3, 1), 2, "must be odd")],
)
def test_bad_arguments_are_refused(shape, size, needle):
    with pytest.raises(ValueError, match=needle):
        classical.median_filter(np.zeros(shape), size=size)
