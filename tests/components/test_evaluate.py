import re

import numpy as np
import pytest

from dae.artifacts import read_json
from dae.components import evaluate


def test_metrics_of_perfect_and_noisy_reconstructions():
    rng = np.random.default_rng(0)
    clean = rng.random((8, 28, 28, 1)).astype(np.float32)
    perfect = evaluate.image_metrics(clean, clean)
    assert {k: perfect[k] for k in ("mse", "psnr")} == {"mse": 0.0, "psnr": 100.0}
    assert perfect["ssim"] == pytest.approx(1.0)
    # Cross-entropy of a perfect gray reconstruction is the pixels' own entropy, not 0.
    entropy = -(clean * np.log(clean) + (1 - clean) * np.log(1 - clean)).mean()
    assert perfect["bce"] == pytest.approx(entropy, rel=1e-3)
    noisy = np.clip(clean + rng.normal(0, 0.1, clean.shape), 0, 1).astype(np.float32)
    m = evaluate.image_metrics(noisy, clean)
    # PSNR = 10 log10(1 / MSE) per image; for near-equal MSEs the mean agrees closely.
    assert m["psnr"] == pytest.approx(10 * np.log10(1 / m["mse"]), abs=0.2)
    assert 0 < m["ssim"] < 1 and m["bce"] > perfect["bce"]


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


def test_an_absolute_psnr_floor_can_be_required():
    metrics = {"psnr_noisy": 10.0, "psnr_denoised": 18.0}
    ok, reason = evaluate.bless(metrics, None, 3.0, 0.5, min_psnr_db=20.0)
    assert not ok and "below the required floor 20.0 dB" in reason
    assert evaluate.bless(metrics, None, 3.0, 0.5, min_psnr_db=17.5)[0]


def test_per_class_means_leave_out_unlabelled_images():
    values = np.array([1.0, 3.0, 10.0, 7.0])
    assert evaluate.per_class(values, np.array([0, 0, 2, -1])) == {"0": 2.0, "2": 10.0}
    assert evaluate.per_class(values, np.full(4, -1)) == {}


def _sweep(**kinds):
    from dae.pipeline.config import SweepSpec

    return [SweepSpec(kind=k, levels=v) for k, v in kinds.items()]


def test_the_sweep_scores_every_level_on_the_same_noise_every_time():
    from support import digit_like

    clean = digit_like(6, (12, 12, 1))[0].astype(np.float32) / 255
    sweep = _sweep(gaussian=[0.05, 0.2, 0.5], salt_pepper=[0.1, 0.4], mask=[0.3])
    rows = evaluate.sweep_table(lambda x: x, clean, sweep)
    assert [(r["kind"], r["level"]) for r in rows] == [(s.kind, v) for s in sweep for v in s.levels]
    columns = {f"{m}_{s}" for m in ("psnr", "ssim") for s in ("noisy", "denoised", "median")}
    assert all(set(r) == {"kind", "level"} | columns for r in rows)
    # An identity "denoiser" leaves the noise as it is; more noise, lower PSNR and SSIM.
    assert all(r["psnr_denoised"] == r["psnr_noisy"] for r in rows)
    for kind in ("gaussian", "salt_pepper"):
        psnr = [r["psnr_noisy"] for r in rows if r["kind"] == kind]
        ssim = [r["ssim_noisy"] for r in rows if r["kind"] == kind]
        assert psnr == sorted(psnr, reverse=True) and len(set(psnr)) == len(psnr)
        assert ssim == sorted(ssim, reverse=True)
    # The median filter removes impulses: far better than the input under salt and pepper.
    (sp,) = [r for r in rows if (r["kind"], r["level"]) == ("salt_pepper", 0.1)]
    assert sp["psnr_median"] > sp["psnr_noisy"] + 3
    assert evaluate.sweep_table(lambda x: x, clean, sweep) == rows  # the draw is seeded


def test_the_sweep_is_made_from_the_first_sweep_examples_images():
    from support import digit_like

    images = digit_like(10, (12, 12, 1))[0].astype(np.float32) / 255
    test = {"noisy": images, "clean": images, "label": np.zeros(10, int)}
    seen = []

    def predict(x):
        seen.append(len(x))
        return x

    metrics = evaluate.score(predict, test, _sweep(gaussian=[0.1, 0.3], mask=[0.2]), 4)
    assert seen == [10, 10, 4, 4, 4] and len(metrics["sweep"]) == 3
    assert "noise_kinds" not in metrics
    evaluate.score(predict, test, _sweep(mask=[0.2]), None)
    assert seen[-1] == 10  # None: every test image


def test_the_corruptions():
    from dae.imaging import corrupt

    clean = (np.random.default_rng(0).random((6, 12, 12, 1)) < 0.3).astype(np.float32)
    masked = corrupt(clean, "mask", 1.0, np.random.default_rng(0))
    assert not masked.any()
    gray = np.float32(100 / 255)  # 8-bit values survive the 8-bit rounding
    sp = corrupt(np.full((1000,), gray), "salt_pepper", 0.2, np.random.default_rng(0))
    assert set(np.unique(sp)) == {0.0, gray, 1.0} and 0.15 < np.mean(sp != gray) < 0.25
    with pytest.raises(ValueError, match="unknown noise kind 'speckle'"):
        corrupt(clean, "speckle", 0.1, np.random.default_rng(0))


def _row(kind, level, psnr, ssim):
    """A sweep row: the noisy input scores (20 dB, 0.5), the model (psnr, ssim)."""
    return {
        "kind": kind,
        "level": level,
        "psnr_noisy": 20.0,
        "psnr_denoised": psnr,
        "ssim_noisy": 0.5,
        "ssim_denoised": ssim,
    }


@pytest.mark.parametrize(
    "rows, gain, floor, reason",
    [
        # PSNR: the first failing level, both numbers; a margin is added to the input's.
        (
            [_row("gaussian", 0.5, 25.0, 0.9), _row("gaussian", 0.05, 19.5, 0.9)],
            0.0,
            False,
            "gaussian 0.05: PSNR 19.50 dB is below the noisy input's 20.00 dB",
        ),
        (
            [_row("mask", 0.1, 20.5, 0.9)],
            1.0,
            False,
            "mask 0.1: PSNR 20.50 dB is below the noisy input's 20.00 dB + 1 dB",
        ),
        ([_row("mask", 0.1, 19.5, 0.9)], -1.0, False, None),  # a tolerated loss
        ([_row("mask", 0.1, 19.5, 0.9)], None, False, None),  # the rule is off
        (
            [_row("mask", 0.1, float("nan"), 0.9)],
            -50.0,
            False,
            "mask 0.1: PSNR nan dB is below the noisy input's 20.00 dB - 50 dB",
        ),
        # SSIM: never below the input's, when the floor is on.
        (
            [_row("salt_pepper", 0.2, 25.0, 0.49)],
            0.0,
            True,
            "salt_pepper 0.2: SSIM 0.490 is below the noisy input's 0.500",
        ),
        ([_row("salt_pepper", 0.2, 25.0, 0.49)], 0.0, False, None),
        ([_row("salt_pepper", 0.2, 25.0, 0.5)], 0.0, True, None),
    ],
)
def test_the_sweep_rules(rows, gain, floor, reason):
    metrics = {"psnr_noisy": 10.0, "psnr_denoised": 15.0, "sweep": rows}
    ok, why = evaluate.bless(
        metrics, None, 3.0, 0.5, min_sweep_gain_db=gain, sweep_ssim_floor=floor
    )
    assert (ok, why) == ((True, "PSNR gain 5.00 dB") if reason is None else (False, reason))


def test_todays_rules_come_before_the_sweeps():
    metrics = {"psnr_noisy": 10.0, "psnr_denoised": 11.0, "sweep": [_row("mask", 0.1, 0, 0)]}
    ok, why = evaluate.bless(metrics, None, 3.0, 0.5, min_sweep_gain_db=0.0)
    assert not ok and why == "PSNR gain 1.00 dB is below the required 3.0 dB"


def test_nan_output_is_never_blessed():
    ok, reason = evaluate.bless({"psnr_noisy": 10.0, "psnr_denoised": float("nan")}, None, 3.0, 0.5)
    assert not ok and "not finite" in reason


def _pairs(tmp_path, shape=(28, 28, 1)):
    from support import digit_like, write_examples

    from dae.component import StageContext
    from dae.components import transform
    from dae.pipeline.config import load_config

    cfg = load_config(None, "smoke")
    images, labels = digit_like(40, shape)
    splits = {"train": (images, labels), "test": (images, labels)}
    raw = write_examples(tmp_path / f"raw{shape[0]}", splits)
    outs = {"transformed_examples": tmp_path / f"t{shape[0]}", "transform_graph": tmp_path / "g"}
    transform.run(StageContext(cfg, {"examples": raw}, outs, "r", tmp_path, tmp_path, print))
    return cfg, outs["transformed_examples"]


def _run_evaluate(tmp_path, cfg, examples, model_dir, name):
    """The resolver, then the evaluator on its answer, as the DAG wires them."""
    from dae.component import StageContext
    from dae.components import resolver

    outs = {
        "evaluation": tmp_path / name / "e",
        "blessing": tmp_path / name / "b",
        "baseline": tmp_path / name / "r",
    }
    for p in outs.values():
        p.mkdir(parents=True)

    def ctx(inputs, outputs):
        return StageContext(cfg, inputs, outputs, "r", tmp_path, tmp_path / "serving", print)

    resolver.run(ctx({"model": model_dir}, {"baseline": outs.pop("baseline")}))
    inputs = {
        "transformed_examples": examples,
        "model": model_dir,
        "baseline": tmp_path / name / "r",
    }
    return evaluate.run(ctx(inputs, outs)).metrics, outs


def test_evaluate_scores_and_compares_with_the_served_model(tmp_path):
    from dae.components import models
    from dae.serving.format.export import push

    cfg, examples = _pairs(tmp_path)
    model = models.build_model(models.hyperparameters(), "dense", (28, 28, 1), 0.1, 0.3)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    model.save(model_dir / "model.keras")

    first, outs = _run_evaluate(tmp_path, cfg, examples, model_dir, "first")
    assert first["baseline_version"] is None and first["baseline_psnr"] is None
    assert first["baseline_metrics"] is None and "neg_elbo" not in first
    assert [(r["kind"], r["level"]) for r in first["sweep"]] == [
        (s.kind, v) for s in cfg.evaluate.sweep for v in s.levels
    ]
    assert set(first["psnr_per_class"]) <= {str(k) for k in range(10)}
    assert {"mse_clean_input", "bce_noisy", "bce_denoised", "ssim_clean_input"} <= set(first)
    # An untrained model barely denoises: not blessed, and the blessing says why.
    assert first["blessed"] is False and (outs["blessing"] / "NOT_BLESSED").exists()
    assert read_json(outs["evaluation"] / "metrics.json")["psnr_noisy"] == first["psnr_noisy"]

    push(model, tmp_path / "serving" / cfg.push.model_name)
    second, judged = _run_evaluate(tmp_path, cfg, examples, model_dir, "second")
    assert second["baseline_version"] == 1
    assert second["baseline_psnr"] == pytest.approx(second["psnr_denoised"], abs=1e-3)
    # The comparison table: the served version scored on this run's test images.
    assert second["baseline_metrics"]["ssim"] == pytest.approx(second["ssim_denoised"], abs=1e-4)
    # The blessing records what it was judged against, for push to check it is still so.
    verdict = read_json(judged["blessing"] / "blessing.json")
    assert (verdict["model_name"], verdict["baseline_version"]) == (cfg.push.model_name, 1)

    # A served version that cannot be loaded (a hand-made folder): one line naming it.
    from dae.component import StageError

    (tmp_path / "serving" / cfg.push.model_name / "2").mkdir()
    with pytest.raises(StageError, match=r"served version .*/2 cannot be loaded .*fix or remove"):
        _run_evaluate(tmp_path, cfg, examples, model_dir, "third")


def test_a_vae_is_scored_by_its_elbo(tmp_path):
    from dae.components import models

    cfg, examples = _pairs(tmp_path)
    model = models.build_model(models.hyperparameters(), "conv_vae", (28, 28, 1), 0.1, 0.3)
    (tmp_path / "model").mkdir()
    models.deployable(model).save(tmp_path / "model" / "model.keras")
    result, outs = _run_evaluate(tmp_path, cfg, examples, tmp_path / "model", "vae")
    assert result["neg_elbo"] == pytest.approx(result["reconstruction_nats"] + result["kl"])
    # An untrained decoder outputs about 0.5 everywhere: about 784 ln 2 nats per image.
    assert result["reconstruction_nats"] == pytest.approx(784 * np.log(2), rel=0.1)
    assert read_json(outs["evaluation"] / "metrics.json")["neg_elbo"] == result["neg_elbo"]
    assert result["neg_elbo_clean_input"] == pytest.approx(784 * np.log(2), rel=0.1)


def test_a_served_model_of_another_shape_is_not_a_baseline(tmp_path):
    from dae.components import models
    from dae.serving.format.export import push

    cfg, examples = _pairs(tmp_path)
    other = models.build_model(models.hyperparameters(), "dense", (32, 32, 1), 0.1, 0.3)
    push(other, tmp_path / "serving" / cfg.push.model_name)
    model = models.build_model(models.hyperparameters(), "dense", (28, 28, 1), 0.1, 0.3)
    (tmp_path / "model").mkdir()
    model.save(tmp_path / "model" / "model.keras")
    result, _ = _run_evaluate(tmp_path, cfg, examples, tmp_path / "model", "x")
    assert result["baseline_version"] == 1 and result["baseline_psnr"] is None


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sweep")
    return tmp, *_pairs(tmp)


def _filter_model(path, kernel):
    """A fixed 3x3 filter as a saved Keras model: a mean blurs (it harms light noise: a
    denoiser that learnt to smooth everything), a centre tap is the identity."""
    import keras

    layer = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False)
    model = keras.Sequential([keras.Input((28, 28, 1)), layer])
    layer.set_weights([np.asarray(kernel, np.float32).reshape(3, 3, 1, 1)])
    path.mkdir()
    model.save(path / "model.keras")
    return path


PSNR_REFUSAL = r"gaussian 0\.05: PSNR [\d.]+ dB is below the noisy input's [\d.]+ dB"
SSIM_REFUSAL = r"gaussian 0\.05: SSIM [\d.]+ is below the noisy input's [\d.]+"


@pytest.mark.parametrize(
    "rule, levels, blurs, reason",
    [
        # Heavy noise first: the reason names the first level that fails, not the first row.
        ("min_sweep_gain_db=0.0", "[0.5, 0.05]", True, PSNR_REFUSAL),
        ("min_sweep_gain_db=0.0", "[0.5, 0.05]", False, None),
        ("sweep_ssim_floor=true", "[0.05, 0.5]", True, SSIM_REFUSAL),
        ("sweep_ssim_floor=true", "[0.05, 0.5]", False, None),
    ],
    ids=["psnr-blur", "psnr-identity", "ssim-blur", "ssim-identity"],
)
def test_a_model_that_harms_light_noise_is_refused(pairs, rule, levels, blurs, reason, capsys):
    from dae.pipeline.config import apply_overrides

    tmp, cfg, examples = pairs
    sweep = f"evaluate.sweep=[{{kind: gaussian, levels: {levels}}}]"
    # Today's rules pass even the identity: the sweep's rule is the judge here.
    cfg = apply_overrides(cfg, [f"evaluate.{rule}", "evaluate.min_psnr_gain_db=-100", sweep])
    kernel = np.full(9, 1 / 9) if blurs else np.eye(1, 9, 4)
    name = f"{rule[:10]}-{blurs}"
    model_dir = _filter_model(tmp / f"model-{name}", kernel)
    result, outs = _run_evaluate(tmp, cfg, examples, model_dir, name)
    verdict = read_json(outs["blessing"] / "blessing.json")
    at = {r["level"]: r for r in result["sweep"]}
    if blurs:  # better than its input where the noise is heavy, worse where it is light
        assert at[0.5]["psnr_denoised"] > at[0.5]["psnr_noisy"]
        assert at[0.05]["psnr_denoised"] < at[0.05]["psnr_noisy"]
        assert at[0.05]["ssim_denoised"] < at[0.05]["ssim_noisy"]
        assert not verdict["blessed"] and re.fullmatch(reason, verdict["reason"])
        assert (outs["blessing"] / "NOT_BLESSED").exists()
        assert "the sweep's worst level, gaussian 0.05: PSNR" in capsys.readouterr().out
    else:
        assert verdict["blessed"] and (outs["blessing"] / "BLESSED").exists()
