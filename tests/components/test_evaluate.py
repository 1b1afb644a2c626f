import numpy as np
import pytest

from components import evaluate
from components.artifacts import read_json


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


def test_nan_output_is_never_blessed():
    ok, reason = evaluate.bless({"psnr_noisy": 10.0, "psnr_denoised": float("nan")}, None, 3.0, 0.5)
    assert not ok and "not finite" in reason


def _pairs(tmp_path, shape=(28, 28, 1)):
    from support import digit_like, write_examples

    from components import transform
    from components.artifacts import StageContext
    from pipeline.config import load_config

    cfg = load_config(None, "smoke")
    images, labels = digit_like(40, shape)
    splits = {"train": (images, labels), "test": (images, labels)}
    raw = write_examples(tmp_path / f"raw{shape[0]}", splits)
    outs = {"transformed_examples": tmp_path / f"t{shape[0]}", "transform_graph": tmp_path / "g"}
    transform.run(StageContext(cfg, {"examples": raw}, outs, "r", tmp_path, tmp_path, print))
    return cfg, outs["transformed_examples"]


def _run_evaluate(tmp_path, cfg, examples, model_dir, name):
    from components.artifacts import StageContext

    outs = {"evaluation": tmp_path / name / "e", "blessing": tmp_path / name / "b"}
    for p in outs.values():
        p.mkdir(parents=True)
    ctx = StageContext(
        cfg, {"transformed_examples": examples, "model": model_dir}, outs, "r", tmp_path,
        tmp_path / "serving", lambda m: None,
    )  # fmt: skip
    return evaluate.run(ctx), outs


def test_evaluate_scores_and_compares_with_the_served_model(tmp_path):
    from components import models
    from serving.export import push

    cfg, examples = _pairs(tmp_path)
    model = models.build_model(models.hyperparameters(), "dense", (28, 28, 1), 0.1, 0.3)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    model.save(model_dir / "model.keras")

    first, outs = _run_evaluate(tmp_path, cfg, examples, model_dir, "first")
    assert first["baseline_version"] is None and first["baseline_psnr"] is None
    # An untrained model barely denoises: not blessed, and the blessing says why.
    assert first["blessed"] is False and (outs["blessing"] / "NOT_BLESSED").exists()
    assert read_json(outs["evaluation"] / "metrics.json")["psnr_noisy"] == first["psnr_noisy"]

    push(model, tmp_path / "serving" / cfg.push.model_name)
    second, _ = _run_evaluate(tmp_path, cfg, examples, model_dir, "second")
    assert second["baseline_version"] == 1
    assert second["baseline_psnr"] == pytest.approx(second["psnr_denoised"], abs=1e-3)


def test_a_served_model_of_another_shape_is_not_a_baseline(tmp_path):
    from components import models
    from serving.export import push

    cfg, examples = _pairs(tmp_path)
    other = models.build_model(models.hyperparameters(), "dense", (32, 32, 1), 0.1, 0.3)
    push(other, tmp_path / "serving" / cfg.push.model_name)
    model = models.build_model(models.hyperparameters(), "dense", (28, 28, 1), 0.1, 0.3)
    (tmp_path / "model").mkdir()
    model.save(tmp_path / "model" / "model.keras")
    result, _ = _run_evaluate(tmp_path, cfg, examples, tmp_path / "model", "x")
    assert result["baseline_version"] == 1 and result["baseline_psnr"] is None
