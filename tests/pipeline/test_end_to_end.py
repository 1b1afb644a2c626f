"""The real stages, end to end, on real MNIST (the smoke profile), through the console script."""

import json
import shutil

import numpy as np
import pytest
from support import dae

from dae.artifacts import read_split
from dae.pipeline.lifecycle import METRIC_KEYS
from dae.serving.format.export import INPUT_NAME, OUTPUT_NAME, SIGNATURE

STAGES = [
    "ingest",
    "validate",
    "transform",
    "tune",
    "train",
    "resolver",
    "evaluate",
    "push",
    "report",
]


@pytest.fixture(scope="module")
def smoke_run(smoke_root, tmp_path_factory):
    """A copy of the session's smoke run: this module re-runs a stage in it."""
    root = tmp_path_factory.mktemp("e2e")
    shutil.copytree(smoke_root[0], root, dirs_exist_ok=True)
    return root, root / "runs" / smoke_root[1].name, smoke_root[2]


def test_smoke_run_denoises_and_pushes(smoke_run):
    root, run_dir, stdout = smoke_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(METRIC_KEYS) | {"stage_seconds", "status", "run_id"} <= set(metrics)
    assert metrics["status"] == "succeeded"
    assert metrics["psnr_denoised"] >= metrics["psnr_noisy"] + 3.0
    assert metrics["ssim_denoised"] > metrics["ssim_noisy"]
    assert metrics["blessed"] is True and metrics["pushed_version"] == 1
    assert list(metrics["stage_seconds"]) == STAGES
    # Every stage is timed; the resolver reads one folder (under 10 ms: 0.0 rounded).
    assert all(v > 0 for k, v in metrics["stage_seconds"].items() if k != "resolver")
    assert all((run_dir / s / "_SUCCESS").exists() for s in STAGES)
    assert "pushed: version 1 at " in stdout and "/serving/denoiser/1\n" in stdout
    assert "PSNR: noisy" in stdout and "stage times: ingest" in stdout


def test_pushed_servable_reloads_and_denoises(smoke_run):
    import tensorflow as tf

    root, run_dir, _ = smoke_run
    version = root / "serving" / "denoiser" / "1"
    assert sorted(p.name for p in version.iterdir()) == [
        "assets",
        "assets.extra",
        "fingerprint.pb",
        "saved_model.pb",
        "variables",
    ]
    fn = tf.saved_model.load(str(version)).signatures[SIGNATURE]
    test = read_split(run_dir / "transform" / "transformed_examples", "test", ("noisy", "clean"))
    out = fn(**{INPUT_NAME: tf.constant(test["noisy"])})[OUTPUT_NAME].numpy()
    assert out.shape == test["noisy"].shape and out.dtype == np.float32
    mse_noisy = np.mean((test["noisy"] - test["clean"]) ** 2)
    mse_out = np.mean((out - test["clean"]) ** 2)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert mse_out < mse_noisy / 2
    assert mse_out == pytest.approx(metrics["mse_denoised"], rel=1e-3)
    provenance = json.loads((version / "assets.extra" / "dae_provenance.json").read_text())
    assert provenance["run_id"] == run_dir.name


def test_stage_reruns_one_stage_of_a_run(smoke_run):
    root, run_dir, _ = smoke_run
    run = ["--run", run_dir.name, "--root", str(root)]
    before = json.loads((run_dir / "evaluate" / "evaluation" / "metrics.json").read_text())
    # The resolver again: version 1 is in service now, and it is this very model, so its
    # answer is the same as the run's and what read it still counts.
    proc = dae("stage", "resolver", *run)
    assert "resolver: done in" in proc.stdout and "invalidated" not in proc.stdout
    baseline = json.loads((run_dir / "resolver" / "baseline" / "baseline.json").read_text())
    assert baseline == {"version": None}
    assert all((run_dir / s / "_SUCCESS").exists() for s in STAGES)
    # A cache hit changes nothing either; the report then runs from cache on what it read.
    proc = dae("stage", "train", "--cache-only", *run)
    assert "train: cached" in proc.stdout and "invalidated" not in proc.stdout
    assert all((run_dir / s / "_SUCCESS").exists() for s in STAGES)
    assert "report: done in" in dae("stage", "report", "--cache", *run).stdout
    proc = dae("stage", "evaluate", *run)
    assert "evaluate: done in" in proc.stdout and (run_dir / "evaluate" / "_SUCCESS").exists()
    after = json.loads((run_dir / "evaluate" / "evaluation" / "metrics.json").read_text())
    assert after["psnr_denoised"] == pytest.approx(before["psnr_denoised"], abs=1e-4)
    assert after["baseline_version"] is None  # a model is not its own baseline
    # What the console says was invalidated is what lost its marker, and what runs show says.
    said = {line[1:].split("]")[0] for line in proc.stdout.splitlines() if "invalidated" in line}
    assert said == {s for s in ("push", "report") if not (run_dir / s / "_SUCCESS").exists()}
    shown = dae("runs", "show", run_dir.name, "--root", str(root)).stdout
    assert shown.count(" invalidated ") == len(said)


def test_failed_run_is_recorded_and_pushes_nothing(tmp_path):
    proc = dae(
        "run",
        "--profile",
        "smoke",
        "--root",
        str(tmp_path),
        "--set",
        "validate.expected_mean=0.9",
        check=False,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("dae: error: data anomaly: train pixel")
    (run_dir,) = (tmp_path / "runs").iterdir()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "failed" and metrics["error"].startswith("validate: data anomaly")
    assert not (run_dir / "validate" / "_SUCCESS").exists()
    assert not (tmp_path / "serving").exists()
