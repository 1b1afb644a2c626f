"""Evaluate (TFX's Evaluator): reconstruction quality on the test split, and the blessing.

The model in service is re-scored on this run's own test examples, so the comparison is
like for like even when the noise or the test set changed since it was pushed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from components.artifacts import StageContext, read_split, write_json
from serving.export import latest_version, load_servable

INPUTS = ("transformed_examples", "model")
OUTPUTS = ("evaluation", "blessing")


# ---- pure core -------------------------------------------------------------------------


def image_metrics(pred: np.ndarray, clean: np.ndarray, batch: int = 2048) -> dict[str, float]:
    """Mean MSE, PSNR and SSIM over images, all in [0, 1] (tf.image's definitions)."""
    import tensorflow as tf

    mse, psnr, ssim = [], [], []
    for i in range(0, len(clean), batch):
        p = tf.constant(pred[i : i + batch], tf.float32)
        c = tf.constant(clean[i : i + batch], tf.float32)
        mse.append(tf.reduce_mean(tf.square(p - c), axis=[1, 2, 3]).numpy())
        # An exact reconstruction has infinite PSNR; cap it so means stay finite.
        psnr.append(np.minimum(tf.image.psnr(p, c, max_val=1.0).numpy(), 100.0))
        ssim.append(tf.image.ssim(p, c, max_val=1.0).numpy())
    return {
        "mse": float(np.concatenate(mse).mean()),
        "psnr": float(np.concatenate(psnr).mean()),
        "ssim": float(np.concatenate(ssim).mean()),
    }


def bless(
    metrics: dict[str, float],
    baseline_psnr: float | None,
    min_gain_db: float,
    max_regression_db: float,
) -> tuple[bool, str]:
    """Blessed when denoising helps enough and is not worse than the model in service."""
    gain = metrics["psnr_denoised"] - metrics["psnr_noisy"]
    if not np.isfinite(gain):
        return False, "PSNR is not finite: the model's output is broken (NaN)"
    if gain < min_gain_db:
        return False, f"PSNR gain {gain:.2f} dB is below the required {min_gain_db} dB"
    if baseline_psnr is not None and metrics["psnr_denoised"] < baseline_psnr - max_regression_db:
        return False, (
            f"PSNR {metrics['psnr_denoised']:.2f} dB is more than {max_regression_db} dB below "
            f"the served model's {baseline_psnr:.2f} dB"
        )
    return True, f"PSNR gain {gain:.2f} dB" + (
        f", served model {baseline_psnr:.2f} dB" if baseline_psnr is not None else ""
    )


# ---- artifact I/O ----------------------------------------------------------------------


def _baseline(serving_base, noisy, clean, log) -> tuple[int | None, float | None]:
    version = latest_version(serving_base)
    if version is None:
        return None, None
    denoise = load_servable(serving_base / str(version))
    if denoise.input_shape[1:] != noisy.shape[1:]:
        log(f"evaluate: served version {version} takes {denoise.input_shape}, not comparable")
        return version, None
    return version, image_metrics(denoise(noisy), clean)["psnr"]


def run(ctx: StageContext) -> dict[str, Any]:
    import keras

    cfg = ctx.config
    test = read_split(ctx.inputs["transformed_examples"], "test", ("noisy", "clean"))
    model = keras.models.load_model(ctx.inputs["model"] / "model.keras", compile=False)
    denoised = model.predict(test["noisy"], batch_size=cfg.evaluate.batch_size, verbose=0)
    noisy_m = image_metrics(test["noisy"], test["clean"])
    denoised_m = image_metrics(denoised, test["clean"])
    metrics = {f"{k}_noisy": v for k, v in noisy_m.items()}
    metrics |= {f"{k}_denoised": v for k, v in denoised_m.items()}
    metrics["test_examples"] = len(test["clean"])
    base = ctx.serving_dir / cfg.push.model_name
    version, baseline_psnr = _baseline(base, test["noisy"], test["clean"], ctx.log)
    blessed, reason = bless(
        metrics, baseline_psnr, cfg.evaluate.min_psnr_gain_db, cfg.evaluate.max_regression_db
    )
    metrics |= {"baseline_version": version, "baseline_psnr": baseline_psnr}
    write_json(ctx.outputs["evaluation"] / "metrics.json", metrics)
    blessing = ctx.outputs["blessing"]
    write_json(blessing / "blessing.json", {"blessed": blessed, "reason": reason})
    (blessing / ("BLESSED" if blessed else "NOT_BLESSED")).touch()
    ctx.log(
        f"evaluate: PSNR noisy {metrics['psnr_noisy']:.2f} dB -> denoised "
        f"{metrics['psnr_denoised']:.2f} dB, SSIM {metrics['ssim_noisy']:.3f} -> "
        f"{metrics['ssim_denoised']:.3f}; {'blessed' if blessed else 'not blessed'}: {reason}"
    )
    return {**metrics, "blessed": blessed, "blessing_reason": reason}
