"""Caching, lineage and concurrency: stand-in components for the rules, the real smoke
pipeline for the figures a user sees."""

import dataclasses
import json
import shutil
import subprocess
import time

import pytest
from stand_ins import stand_in
from support import DAE, copy_root, dae

from dae.component import StageError
from dae.pipeline import runner
from dae.pipeline.config import Config
from dae.pipeline.dag import Node
from dae.pipeline.locks import root_lock
from dae.pipeline.metadata import MetadataStore, default_url


def counted(calls: list, name: str, fail_times: int = 0):
    state = {"fails": fail_times}

    def run(ctx):
        calls.append(name)
        if state["fails"]:
            state["fails"] -= 1
            raise StageError(f"{name} failed on purpose")
        text = "".join(p.read_text() for d in ctx.inputs.values() for p in sorted(d.glob("*")))
        (ctx.outputs["out"] / "data.txt").write_text(text + name)
        return {"made": name}

    return stand_in(run, inputs=("x",))


@pytest.fixture
def two_stages(monkeypatch):
    calls = []
    first = counted(calls, "a")
    first.SPEC = dataclasses.replace(first.SPEC, inputs={})
    dag = (Node("a", first), Node("b", counted(calls, "b", 1), {"x": "a.out"}))
    monkeypatch.setattr(runner, "DAG", dag)
    monkeypatch.setattr(runner, "STAGES", ("a", "b"))
    return calls


def test_failed_executions_are_never_cache_hits(tmp_path, two_stages):
    with pytest.raises(StageError):
        runner.run_pipeline(Config(), tmp_path, run_id="r1")
    assert two_stages == ["a", "b"]
    metrics = runner.run_pipeline(Config(), tmp_path, run_id="r2")
    assert two_stages == ["a", "b", "b"] and metrics["cached_stages"] == ["a"]
    runner.run_pipeline(Config(), tmp_path, run_id="r3")
    assert two_stages == ["a", "b", "b"]  # everything cached now
    store = MetadataStore(default_url(tmp_path))
    statuses = [(e["component"], e["status"]) for e in store.executions_of_run("r1")]
    assert statuses == [("a", "succeeded"), ("b", "failed")]
    (failed,) = [e for e in store.executions_of_run("r1") if e["status"] == "failed"]
    assert failed["error"] == "b failed on purpose"


def test_missing_outputs_or_no_cache_mean_a_rerun(tmp_path, two_stages):
    with pytest.raises(StageError):
        runner.run_pipeline(Config(), tmp_path, run_id="r1")
    runner.run_pipeline(Config(), tmp_path, run_id="r2")
    shutil.rmtree(tmp_path / "runs" / "r1" / "a" / "out")  # a's outputs are gone
    runner.run_pipeline(Config(), tmp_path, run_id="r3")
    assert two_stages == ["a", "b", "b", "a"]  # a re-ran; same bytes, so b stayed cached
    runner.run_pipeline(Config(), tmp_path, run_id="r4", use_cache=False)
    assert two_stages[-2:] == ["a", "b"]


def test_a_cached_stage_points_at_the_outputs_it_reuses(tmp_path, two_stages):
    with pytest.raises(StageError):
        runner.run_pipeline(Config(), tmp_path, run_id="r1")
    runner.run_pipeline(Config(), tmp_path, run_id="r2")
    record = json.loads((tmp_path / "runs" / "r2" / "a" / "stage.json").read_text())
    assert record["cached_from"] == "r1"
    assert record["outputs"]["out"] == str(tmp_path / "runs" / "r1" / "a" / "out")
    assert (tmp_path / "runs" / "r2" / "b" / "out" / "data.txt").read_text() == "ab"


def test_one_root_one_process(tmp_path):
    busy = pytest.raises(StageError, match=r"in use by dae run first \(pid \d+ on \S+: ")
    with root_lock(tmp_path, "dae run first"), busy:
        runner.run_pipeline(Config(), tmp_path)


def test_stage_processes_share_a_root_but_not_with_a_run(tmp_path):
    stage_a = root_lock(tmp_path, "stage a", shared=True)
    stage_b = root_lock(tmp_path, "stage b", shared=True)
    with stage_a, stage_b, pytest.raises(StageError, match="in use by"):
        runner.run_pipeline(Config(), tmp_path)
    busy = pytest.raises(StageError, match=r"in use by dae run y")
    with root_lock(tmp_path, "dae run y"), busy:
        runner.run_stage(Config(), tmp_path, "r1", "ingest")


# ---- the real pipeline -----------------------------------------------------------------


@pytest.fixture(scope="module")
def cached_root(smoke_root, tmp_path_factory):
    return copy_root(smoke_root[0], tmp_path_factory.mktemp("cache"))


def _metrics(root, stdout):
    path = [
        line.split("metrics: ")[1] for line in stdout.splitlines() if line.startswith("metrics:")
    ]
    return json.loads(open(path[0]).read())


def test_an_unchanged_rerun_is_all_cached(cached_root):
    proc = dae("run", "--profile", "smoke", "--root", str(cached_root))
    metrics = _metrics(cached_root, proc.stdout)
    # Every stage but the resolver, which reads the serving folder every time.
    assert metrics["cached_stages"] == [s for s in metrics["stage_seconds"] if s != "resolver"]
    # The cached report is copied into this run's folder, where `dae run` says it is.
    report = cached_root / "runs" / metrics["run_id"] / "report"
    assert f"report: {report / 'index.html'}" in proc.stdout
    assert {p.name for p in report.glob("*.png")} >= {"denoising.png", "training_curves.png"}
    assert metrics["pushed_version"] == 1 and metrics["psnr_denoised"] > metrics["psnr_noisy"]
    assert "ingest 0.0s (cached)" in proc.stdout


def test_one_parameter_reruns_exactly_what_depends_on_it(cached_root):
    # The dense family: what reruns is the point here, not the model (it trains in seconds).
    proc = dae(
        "run",
        "--profile",
        "smoke",
        "--root",
        str(cached_root),
        "--set",
        "noise.stddev=0.4",
        "--set",
        "model.family=dense",
    )
    metrics = _metrics(cached_root, proc.stdout)
    assert metrics["cached_stages"] == ["ingest", "validate"]
    assert metrics["psnr_noisy"] > 10  # less noise than the smoke run's 0.5


def test_lineage_of_a_pushed_version(cached_root):
    proc = dae("lineage", "denoiser", "1", "--root", str(cached_root), "--json")
    info = json.loads(proc.stdout)
    fingerprint = json.loads(
        next((cached_root / "runs").glob("*/ingest/examples/fingerprint.json")).read_text()
    )
    assert info["dataset"]["sha256"] == fingerprint["sha256"]
    assert info["dataset"]["dataset"] == "mnist" and info["hyperparameters"]
    assert set(info["executions"]) == {
        "ingest",
        "validate",
        "transform",
        "tune",
        "train",
        "resolver",
        "evaluate",
        "push",
    }
    assert info["config"].endswith("config.yaml") and info["code_version"]
    listing = dae("runs", "list", "--root", str(cached_root)).stdout
    assert listing.count("succeeded") >= 2
    shown = dae("runs", "show", info["run_id"], "--root", str(cached_root)).stdout
    assert "train" in shown and "succeeded" in shown


def test_bad_history_requests(tmp_path, cached_root):
    assert "no metadata store" in dae("runs", "list", "--root", str(tmp_path), check=False).stderr
    proc = dae("lineage", "denoiser", "99", "--root", str(cached_root), check=False)
    assert proc.returncode == 1 and "no record of denoiser version 99" in proc.stderr


def test_two_runs_at_once_on_one_root(cached_root):
    cmd = [
        DAE,
        "run",
        "--profile",
        "smoke",
        "--root",
        str(cached_root),
        "--set",
        "seed=7",
        "--set",
        "model.family=dense",
    ]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (cached_root / ".lock").read_text().strip() and time.monotonic() < deadline:
        time.sleep(0.1)
    second = dae("run", "--profile", "smoke", "--root", str(cached_root), check=False)
    assert second.returncode == 75 and "is in use by dae run" in second.stderr
    assert first.wait(timeout=300) == 0
