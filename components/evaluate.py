"""Evaluate (TFX's Evaluator): reconstruction quality on the test split, and the blessing.

Scored on the run's own noisy test images (the headline numbers), on clean inputs (does the
model keep what needs no denoising?), per class, and under each configured corruption, made
from the clean test images with a fixed seed so every run is scored on the same noise. VAEs
also get the test -ELBO. The model in service is re-scored on this run's own test examples,
so the comparison is like for like even when the noise or the test set changed since it was
pushed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dae.artifacts import (
    Examples,
    Model,
    ModelBlessing,
    ModelEvaluation,
    ServedModel,
    read_json,
    read_split,
    write_json,
)
from dae.component import Spec, StageContext, StageError, StageResult
from dae.imaging import corrupt, image_metrics, per_image
from dae.serving.format.export import load_servable

NOISE_SEED = 20240  # the extra corruptions: the same for every run, so runs compare


# ---- pure core -------------------------------------------------------------------------


def per_class(values: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Mean of a per-image metric for each label; unlabelled images (label < 0) are left out."""
    return {str(k): float(values[labels == k].mean()) for k in np.unique(labels[labels >= 0])}


def noise_table(predict, clean: np.ndarray, kinds, seed: int = NOISE_SEED) -> dict[str, dict]:
    """For each corruption {kind, level}: metrics of the noisy and the denoised images."""
    table = {}
    for spec in kinds:
        noisy = corrupt(clean, spec.kind, spec.level, np.random.default_rng(seed))
        row: dict[str, Any] = {"kind": spec.kind, "level": spec.level}
        for name, images in (("noisy", noisy), ("denoised", predict(noisy))):
            row |= {f"{k}_{name}": v for k, v in image_metrics(images, clean).items()}
        table[f"{spec.kind}:{spec.level:g}"] = row
    return table


def bless(
    metrics: dict[str, float],
    baseline_psnr: float | None,
    min_gain_db: float,
    max_regression_db: float,
    min_psnr_db: float | None = None,
) -> tuple[bool, str]:
    """Blessed when denoising helps enough, reaches the absolute floor if one is set, and is
    not worse than the model in service."""
    gain = metrics["psnr_denoised"] - metrics["psnr_noisy"]
    if not np.isfinite(gain):
        return False, "PSNR is not finite: the model's output is broken (NaN)"
    if gain < min_gain_db:
        return False, f"PSNR gain {gain:.2f} dB is below the required {min_gain_db} dB"
    if min_psnr_db is not None and metrics["psnr_denoised"] < min_psnr_db:
        return False, (
            f"PSNR {metrics['psnr_denoised']:.2f} dB is below the required floor {min_psnr_db} dB"
        )
    if baseline_psnr is not None and metrics["psnr_denoised"] < baseline_psnr - max_regression_db:
        return False, (
            f"PSNR {metrics['psnr_denoised']:.2f} dB is more than {max_regression_db} dB below "
            f"the served model's {baseline_psnr:.2f} dB"
        )
    return True, f"PSNR gain {gain:.2f} dB" + (
        f", served model {baseline_psnr:.2f} dB" if baseline_psnr is not None else ""
    )


def score(predict, test: dict[str, np.ndarray], kinds=()) -> dict[str, Any]:
    """Every metric of a denoiser (numpy in, numpy out) on a test split {noisy, clean, label}."""
    clean = test["clean"]
    denoised = per_image(predict(test["noisy"]), clean)
    metrics = {f"{k}_noisy": v for k, v in image_metrics(test["noisy"], clean).items()}
    metrics |= {f"{k}_denoised": float(v.mean()) for k, v in denoised.items()}
    metrics |= {f"{k}_clean_input": v for k, v in image_metrics(predict(clean), clean).items()}
    metrics["psnr_per_class"] = per_class(denoised["psnr"], test["label"])
    metrics["noise_kinds"] = noise_table(predict, clean, kinds)
    metrics["test_examples"] = len(clean)
    return metrics


# ---- artifact I/O ----------------------------------------------------------------------


def _baseline(baseline: dict, noisy, clean, log) -> tuple[int | None, dict | None]:
    """The resolved baseline's metrics on this run's test images (None: no baseline, or
    one that takes other images)."""
    version = baseline["version"]
    if version is None:
        return None, None
    try:
        denoise = load_servable(baseline["uri"])
    except Exception as e:  # a hand-made or damaged version folder: say which, in one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise StageError(
            f"served version {baseline['uri']} cannot be loaded to compare "
            f"against ({first}); fix or remove that folder"
        ) from None
    if denoise.input_shape[1:] != noisy.shape[1:]:
        log(f"evaluate: served version {version} takes {denoise.input_shape}, not comparable")
        return version, None
    return version, image_metrics(denoise(noisy), clean)


def run(ctx: StageContext) -> StageResult:
    import keras

    from dae.components import vae

    cfg = ctx.config
    test = read_split(ctx.inputs["transformed_examples"], "test", ("noisy", "clean"))
    model = keras.models.load_model(ctx.inputs["model"] / Model.KERAS, compile=False)

    def predict(images):
        return model.predict(images, batch_size=cfg.evaluate.batch_size, verbose=0)

    metrics = score(predict, test, cfg.evaluate.noise_kinds)
    if vae.parts(model) is not None:
        metrics |= vae.elbo(model, test["noisy"], test["clean"], NOISE_SEED)
        # The generative model's bound on clean images, encoded clean: what VAE papers report.
        clean_input = vae.elbo(model, test["clean"], test["clean"], NOISE_SEED)
        metrics["neg_elbo_clean_input"] = clean_input["neg_elbo"]
    baseline = read_json(ctx.inputs["baseline"] / ServedModel.FILE)
    version, served = _baseline(baseline, test["noisy"], test["clean"], ctx.log)
    baseline_psnr = served["psnr"] if served else None
    blessed, reason = bless(
        metrics,
        baseline_psnr,
        cfg.evaluate.min_psnr_gain_db,
        cfg.evaluate.max_regression_db,
        cfg.evaluate.min_psnr_db,
    )
    metrics |= {"baseline_version": version, "baseline_psnr": baseline_psnr}
    metrics["baseline_metrics"] = served  # the comparison table's other column
    write_json(ctx.outputs["evaluation"] / ModelEvaluation.METRICS, metrics)
    blessing = ctx.outputs["blessing"]
    # What the verdict was judged against: push refuses it once another version is served.
    verdict = {
        "blessed": blessed,
        "reason": reason,
        "model_name": cfg.push.model_name,
        "baseline_version": version,
    }
    write_json(blessing / ModelBlessing.FILE, verdict)
    (blessing / (ModelBlessing.BLESSED if blessed else ModelBlessing.NOT_BLESSED)).touch()
    elbo = f", -ELBO {metrics['neg_elbo']:.1f} nats" if "neg_elbo" in metrics else ""
    ctx.log(
        f"evaluate: PSNR noisy {metrics['psnr_noisy']:.2f} dB -> denoised "
        f"{metrics['psnr_denoised']:.2f} dB, SSIM {metrics['ssim_noisy']:.3f} -> "
        f"{metrics['ssim_denoised']:.3f}{elbo}; {'blessed' if blessed else 'not blessed'}: "
        f"{reason}"
    )
    return StageResult({**metrics, "blessed": blessed, "blessing_reason": reason})


SPEC = Spec(
    inputs={"transformed_examples": Examples, "model": Model, "baseline": ServedModel},
    outputs={"evaluation": ModelEvaluation, "blessing": ModelBlessing},
    parameters=("evaluate", "push.model_name"),
)
