import numpy as np
import pytest

from components import evaluate


def test_metrics_of_perfect_and_noisy_reconstructions():
    rng = np.random.default_rng(0)
    clean = rng.random((8, 28, 28, 1)).astype(np.float32)
    perfect = evaluate.image_metrics(clean, clean)
    assert perfect == {"mse": 0.0, "psnr": 100.0, "ssim": pytest.approx(1.0)}
    noisy = np.clip(clean + rng.normal(0, 0.1, clean.shape), 0, 1).astype(np.float32)
    m = evaluate.image_metrics(noisy, clean)
    # PSNR = 10 log10(1 / MSE) per image; for near-equal MSEs the mean agrees closely.
    assert m["psnr"] == pytest.approx(10 * np.log10(1 / m["mse"]), abs=0.2)
    assert 0 < m["ssim"] < 1


def test_batching_does_not_change_metrics():
    rng = np.random.default_rng(1)
    a, b = rng.random((2, 10, 16, 16, 1)).astype(np.float32)
    assert evaluate.image_metrics(a, b, batch=3) == pytest.approx(evaluate.image_metrics(a, b))


@pytest.mark.parametrize(
    "denoised, baseline, blessed, needle",
    [
        (15.0, None, True, "gain 5.00 dB"),
        (12.0, None, False, "below the required 3.0 dB"),
        (15.0, 15.4, True, "served model 15.40 dB"),
        (15.0, 16.0, False, "below the served model's 16.00 dB"),
    ],
)
def test_blessing_rules(denoised, baseline, blessed, needle):
    ok, reason = evaluate.bless({"psnr_noisy": 10.0, "psnr_denoised": denoised}, baseline, 3.0, 0.5)
    assert ok is blessed and needle in reason
