"""SIGKILL at each recovery point, then a re-run: resume, no partial artifacts, nothing
half-written under serving/. Most start from a copy of the session's smoke root with one
setting changed, so only the stages from the one under test on run again."""

import json
import os
import signal
import subprocess
import time

import pytest
from support import DAE, copy_root, dae

from dae.artifacts import read_schema, read_split
from dae.pipeline.metadata import MetadataStore, default_url
from dae.serving.format.export import versions

SMOKE = ["run", "--profile", "smoke"]


def kill_when(args, condition, timeout=300):
    """Start `dae ARGS`, SIGKILL it as soon as `condition()` holds; return what held."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.Popen(
        [DAE, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env
    )
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            seen = condition()
            if seen:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return seen
            if proc.poll() is not None:
                pytest.fail(f"finished before the kill point: {proc.stderr.read()[-2000:]}")
            time.sleep(0.005)
        pytest.fail("kill point never reached")
    finally:
        if proc.poll() is None:
            proc.kill()


def _executions(root, component):
    store = MetadataStore(default_url(root))
    return [
        e
        for r in store.runs()
        for e in store.executions_of_run(r["name"])
        if e["component"] == component
    ]


def _metrics(stdout):
    path = [
        line.split("metrics: ")[1] for line in stdout.splitlines() if line.startswith("metrics:")
    ]
    return json.loads(open(path[0]).read())


def _new(pattern: str, root):
    """Files matching `pattern` under `root` that a later glob finds and this one did not."""
    before = set(root.glob(pattern))
    return lambda: [f for f in root.glob(pattern) if f not in before]


def test_killed_during_tune_keeps_finished_trials(smoke_root, tmp_path):
    root = copy_root(smoke_root[0], tmp_path / "root")
    trials = _new("work/tune/*/tuner_results/*/trial_*/trial.json", root)

    def trial_done():
        for f in trials():
            if json.loads(f.read_text() or "{}").get("status") == "COMPLETED":
                return f, f.read_text()
        return None

    args = [*SMOKE, "--root", str(root), "--set", "tune.max_epochs=2"]
    trial, before = kill_when(args, trial_done)
    dae(*args)
    assert trial.read_text() == before  # the finished trial was kept, not redone
    assert len(list(trial.parent.parent.glob("trial_*"))) == 2  # max_trials, not 2 more
    tunes = [e["status"] for e in _executions(root, "tune")]
    assert tunes == ["succeeded", "failed", "succeeded"]  # the smoke run's, killed, re-run


def test_killed_during_train_resumes_from_the_last_epoch(smoke_root, tmp_path):
    root = copy_root(smoke_root[0], tmp_path / "root")
    backups = _new("work/train/*/checkpoints/*/training_metadata.json", root)

    def epoch_saved():
        for f in backups():
            epoch = json.loads(f.read_text() or "{}").get("epoch")
            if epoch is not None and epoch >= 2:
                return epoch
        return None

    args = [*SMOKE, "--root", str(root), "--set", "train.patience=100", "--set", "train.epochs=8"]
    epoch = kill_when(args, epoch_saved)
    metrics = _metrics(dae(*args).stdout)
    assert metrics["cached_stages"] == ["ingest", "validate", "transform", "tune"]
    history = json.loads(
        (root / "runs" / metrics["run_id"] / "train" / "model_run" / "history.json").read_text()
    )
    # 8 epochs from scratch; resumed, only those after the last backup.
    assert 0 < len(history["loss"]) <= 8 - epoch
    killed = [e for e in _executions(root, "train") if e["status"] == "failed"]
    assert killed and "killed" in killed[0]["error"]


@pytest.mark.slow
def test_killed_during_transform_never_uses_partial_shards(tmp_path):
    # Many examples, so that transform runs long enough to be killed; the rest kept cheap.
    small = ["train.epochs=1", "tune.max_trials=1", "tune.max_epochs=1", "model.family=dense"]
    args = [*SMOKE, "--root", str(tmp_path), "--set", "data.max_train_examples=30000"]
    args += [a for s in small for a in ("--set", s)]

    def writing():
        return next(tmp_path.glob("runs/*/transform/transformed_examples/*"), None)

    partial = kill_when(args, writing)
    killed_run = partial.parents[2]
    assert not (killed_run / "transform" / "_SUCCESS").exists()
    metrics = _metrics(dae(*args).stdout)
    assert "transform" not in metrics["cached_stages"]
    assert metrics["cached_stages"] == ["ingest", "validate"]
    out = tmp_path / "runs" / metrics["run_id"] / "transform" / "transformed_examples"
    schema = read_schema(out)
    assert len(read_split(out, "train", ("clean",))["id"]) == schema["splits"]["train"] == 27000


def test_killed_during_push_leaves_the_served_version_alone(smoke_root, tmp_path):
    root = copy_root(smoke_root[0], tmp_path / "root")
    base = root / "serving" / "denoiser"
    v1 = sorted(p.name for p in (base / "1").rglob("*"))
    # A shorter training (another model to push) that the blessing lets through.
    changes = ["train.epochs=8", "evaluate.max_regression_db=50"]
    args = [*SMOKE, "--root", str(root), *(a for c in changes for a in ("--set", c))]
    kill_when(args, lambda: next(base.glob(".tmp-*"), None))
    assert versions(base) == [1]  # no half-written version 2 is visible
    assert sorted(p.name for p in (base / "1").rglob("*")) == v1
    metrics = _metrics(dae(*args).stdout)
    assert metrics["pushed_version"] == 2 and versions(base) == [1, 2]
    assert (base / "2" / "saved_model.pb").is_file()
