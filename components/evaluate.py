"""Evaluate (TFX's Evaluator): reconstruction quality on the test split, and the blessing.

Scored on the run's own noisy test images (the headline numbers), on clean inputs (does the
model keep what needs no denoising?), per class, and on the sweep: each corruption at each
configured level, made from the clean test images with a fixed seed so every run is scored
on the same noise, beside the noisy input and a median filter (a model must beat doing
nothing and doing the obvious, at every level, as its users do not know theirs). VAEs
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
from dae.classical import median_filter
from dae.component import Spec, StageContext, StageError, StageResult
from dae.imaging import corrupt, image_metrics, per_image
from dae.serving.format.export import load_servable

NOISE_SEED = 20240  # the sweep's noise: the same for every run, so runs compare


# ---- pure core -------------------------------------------------------------------------


def per_class(values: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Mean of a per-image metric for each label; unlabelled images (label < 0) are left out."""
    return {str(k): float(values[labels == k].mean()) for k in np.unique(labels[labels >= 0])}


def sweep_table(predict, clean: np.ndarray, sweep, seed: int = NOISE_SEED) -> list[dict]:
    """One row per {kind, level} of the sweep: PSNR and SSIM of the noisy images, the
    denoised ones and the median filter's. Each level draws from the same seed, so a larger
    level grows the same noise and the levels compare."""
    rows = []
    for spec in sweep:
        for level in spec.levels:
            noisy = corrupt(clean, spec.kind, level, np.random.default_rng(seed))
            row: dict[str, Any] = {"kind": spec.kind, "level": level}
            outputs = {"noisy": noisy, "denoised": predict(noisy), "median": median_filter(noisy)}
            for name, images in outputs.items():
                m = image_metrics(images, clean)
                row |= {f"psnr_{name}": m["psnr"], f"ssim_{name}": m["ssim"]}
            rows.append(row)
    return rows


def sweep_refusal(rows: list[dict], min_gain_db: float | None, ssim_floor: bool) -> str | None:
    """Why the sweep refuses the model (its first failing kind and level), or None: its PSNR
    below the noisy input's + min_gain_db (None: no such rule), or (ssim_floor) its SSIM below
    the noisy input's. A NaN fails both: no comparison with it holds."""
    for r in rows:
        where = f"{r['kind']} {r['level']:g}"
        if min_gain_db is not None and not r["psnr_denoised"] >= r["psnr_noisy"] + min_gain_db:
            sign = "+" if min_gain_db > 0 else "-"
            margin = f" {sign} {abs(min_gain_db):g} dB" if min_gain_db else ""
            return (
                f"{where}: PSNR {r['psnr_denoised']:.2f} dB is below the noisy input's "
                f"{r['psnr_noisy']:.2f} dB{margin}"
            )
        if ssim_floor and not r["ssim_denoised"] >= r["ssim_noisy"]:
            return (
                f"{where}: SSIM {r['ssim_denoised']:.3f} is below the noisy input's "
                f"{r['ssim_noisy']:.3f}"
            )
    return None


def bless(
    metrics: dict[str, float],
    baseline_psnr: float | None,
    min_gain_db: float,
    max_regression_db: float,
    min_psnr_db: float | None = None,
    min_sweep_gain_db: float | None = None,
    sweep_ssim_floor: bool = False,
) -> tuple[bool, str]:
    """Blessed when denoising helps enough, reaches the absolute floor if one is set, is
    not worse than the model in service and, where those rules are on, never makes an image
    of the sweep (metrics["sweep"]) worse than its noisy input."""
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
    refusal = sweep_refusal(metrics.get("sweep", []), min_sweep_gain_db, sweep_ssim_floor)
    if refusal is not None:
        return False, refusal
    return True, f"PSNR gain {gain:.2f} dB" + (
        f", served model {baseline_psnr:.2f} dB" if baseline_psnr is not None else ""
    )


def score(
    predict, test: dict[str, np.ndarray], sweep=(), sweep_examples: int | None = None
) -> dict[str, Any]:
    """Every metric of a denoiser (numpy in, numpy out) on a test split {noisy, clean, label};
    the sweep on its first sweep_examples clean images (None: all)."""
    clean = test["clean"]
    denoised = per_image(predict(test["noisy"]), clean)
    metrics = {f"{k}_noisy": v for k, v in image_metrics(test["noisy"], clean).items()}
    metrics |= {f"{k}_denoised": float(v.mean()) for k, v in denoised.items()}
    metrics |= {f"{k}_clean_input": v for k, v in image_metrics(predict(clean), clean).items()}
    metrics["psnr_per_class"] = per_class(denoised["psnr"], test["label"])
    metrics["sweep"] = sweep_table(predict, clean[:sweep_examples], sweep)
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

    metrics = score(predict, test, cfg.evaluate.sweep, cfg.evaluate.sweep_examples)
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
        cfg.evaluate.min_sweep_gain_db,
        cfg.evaluate.sweep_ssim_floor,
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
    if metrics["sweep"]:
        worst = min(metrics["sweep"], key=lambda r: r["psnr_denoised"] - r["psnr_noisy"])
        ctx.log(
            f"evaluate: the sweep's worst level, {worst['kind']} {worst['level']:g}: PSNR "
            f"{worst['psnr_noisy']:.2f} dB -> {worst['psnr_denoised']:.2f} dB (median filter "
            f"{worst['psnr_median']:.2f} dB)"
        )
    return StageResult({**metrics, "blessed": blessed, "blessing_reason": reason})


SPEC = Spec(
    inputs={"transformed_examples": Examples, "model": Model, "baseline": ServedModel},
    outputs={"evaluation": ModelEvaluation, "blessing": ModelBlessing},
    parameters=("evaluate", "push.model_name"),
)
