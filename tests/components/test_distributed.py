"""Distributed tune and train on one machine: a Keras Tuner chief and two workers, and two
MultiWorkerMirroredStrategy workers, all real `dae stage` processes on 127.0.0.1."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from support import DAE, free_port

from dae.artifacts import read_json
from dae.component import StageError
from dae.components import distributed, transform, tune
from dae.components.distributed import TrainingJob

TUNE_SETS = [
    "--set",
    "model.family=dense",
    "--set",
    "tune.tuner=random",
    "--set",
    "tune.max_trials=4",
    "--set",
    "tune.max_epochs=1",
    "--set",
    "tune.train_examples=256",
    "--set",
    "tune.eval_examples=64",
]
# 6 steps an epoch; transform's noise, as a multi-worker job trains on, for the one process too.
TRAIN_SETS = [
    "--set",
    "train.epochs=2",
    "--set",
    "train.batch_size=120",
    "--set",
    "train.fresh_noise=false",
]
# One process and a pair agree to 1e-5 in float32; bf16 sums in another order do not.
EXACT_SETS = [*TRAIN_SETS, "--set", "model.precision=float32"]
DIGEST = re.compile(r"weights sha256 ([0-9a-f]{64})")
OURS = ("TF_CONFIG", "KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT")


@pytest.fixture
def run(smoke_root, tmp_path):
    """A copy of the smoke run's root (the shared one must not change): (root, run id)."""
    root, run_dir, _ = smoke_root
    copy = tmp_path / "root"
    shutil.copytree(root, copy, ignore=shutil.ignore_patterns(".lock"))
    return copy, run_dir.name


def _start(args, log: Path, **env) -> subprocess.Popen:
    base = {k: v for k, v in os.environ.items() if k not in OURS}
    with open(log, "w") as out:
        return subprocess.Popen(
            [DAE, *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**base, "TF_CPP_MIN_LOG_LEVEL": "2", **env},
        )


def _finish(procs: dict[str, tuple[subprocess.Popen, Path]], timeout: float) -> dict[str, str]:
    """Wait for every process; one failing or the deadline passing kills the rest (a
    collective or an oracle client would otherwise wait for it for an hour). Returns logs."""
    deadline = time.monotonic() + timeout
    try:
        while any(p.poll() is None for p, _ in procs.values()):
            failed = [n for n, (p, _) in procs.items() if p.poll() not in (None, 0)]
            if failed or time.monotonic() > deadline:
                logs = {n: log.read_text()[-3000:] for n, (_, log) in procs.items()}
                raise AssertionError(f"failed: {failed or 'timeout'}\n{json.dumps(logs, indent=1)}")
            time.sleep(0.2)
    finally:
        for p, _ in procs.values():
            if p.poll() is None:
                p.kill()  # MultiWorkerMirroredStrategy waiting for a peer ignores SIGTERM
                p.wait()
    logs = {n: log.read_text() for n, (_, log) in procs.items()}
    for name, (p, _) in procs.items():
        assert p.returncode == 0, f"{name} exited {p.returncode}:\n{logs[name][-3000:]}"
    return logs


# ---- Keras Tuner's chief/worker mode ------------------------------------------------------


@pytest.mark.slow
def test_a_chief_and_two_workers_search_together(run, tmp_path):
    root, run_id = run
    rdir = root / "runs" / run_id
    port = str(free_port())
    args = ["stage", "tune", "--run", run_id, "--root", str(root), *TUNE_SETS]
    procs = {}
    for tuner_id in ("chief", "tuner0", "tuner1"):  # workers wait for the chief's server
        log = tmp_path / f"{tuner_id}.log"
        procs[tuner_id] = (
            _start(
                args,
                log,
                KERASTUNER_TUNER_ID=tuner_id,
                KERASTUNER_ORACLE_IP="127.0.0.1",
                KERASTUNER_ORACLE_PORT=port,
            ),
            log,
        )
    logs = _finish(procs, timeout=150)

    record = read_json(rdir / "tune" / "stage.json")  # the chief's alone
    (project,) = Path(record["outputs"]["tuner_results"]).glob("dense-random-*")
    reports = {w: read_json(project / "workers" / f"{w}.json") for w in ("tuner0", "tuner1")}
    # The workers ran the trials between them, each its share, no trial twice.
    assert all(reports.values()), reports
    assert not set(reports["tuner0"]) & set(reports["tuner1"])
    ran = {**reports["tuner0"], **reports["tuner1"]}
    assert set(ran) == {p.name.removeprefix("trial_") for p in project.glob("trial_*")}
    assert len(ran) == 4 and record["summary"]["tune_trials"] == 4
    # The chief's oracle holds what the workers reported ...
    for trial_id, mine in ran.items():
        held = read_json(project / f"trial_{trial_id}" / "trial.json")
        assert mine["status"] == held["status"] == "COMPLETED"
        assert held["score"] == pytest.approx(mine["score"], rel=1e-6)
        assert held["hyperparameters"]["values"] == mine["values"]
    # ... and its best is the best any worker reported.
    best_id = min(ran, key=lambda t: ran[t]["score"])
    best = read_json(rdir / "tune" / "best_hyperparameters" / "best_hyperparameters.json")
    assert best["values"] == ran[best_id]["values"] and best["family"] == "dense"
    assert record["summary"]["tune_best_score"] == pytest.approx(ran[best_id]["score"], rel=1e-6)
    assert "worker" not in record["summary"] and (rdir / "tune" / "_SUCCESS").exists()
    for w in ("tuner0", "tuner1"):
        assert f"worker {w} ran {len(reports[w])} trials" in logs[w]


@pytest.mark.slow
def test_a_worker_that_starts_after_the_search_ended_is_told_so(run, tmp_path):
    """Told how many workers it has (DAE_TUNER_WORKERS, as the Argo workflow tells it), the
    chief outlives a search one worker ran alone, and answers the late one: no trials."""
    root, run_id = run
    port = str(free_port())
    args = [
        "stage",
        "tune",
        "--run",
        run_id,
        "--root",
        str(root),
        *TUNE_SETS,
        "--set",
        "tune.max_trials=2",
    ]
    env = {"KERASTUNER_ORACLE_IP": "127.0.0.1", "KERASTUNER_ORACLE_PORT": port}
    log = {n: tmp_path / f"{n}.log" for n in ("chief", "tuner0", "tuner1")}
    chief = _start(args, log["chief"], KERASTUNER_TUNER_ID="chief", DAE_TUNER_WORKERS="2", **env)
    first = _start(args, log["tuner0"], KERASTUNER_TUNER_ID="tuner0", **env)
    _finish({"tuner0": (first, log["tuner0"])}, timeout=150)
    assert chief.poll() is None, log["chief"].read_text()[-3000:]  # Keras Tuner's would be gone
    late = _start(args, log["tuner1"], KERASTUNER_TUNER_ID="tuner1", **env)
    logs = _finish({"chief": (chief, log["chief"]), "tuner1": (late, log["tuner1"])}, timeout=90)
    assert "until 2 workers have been told the search is over" in logs["chief"]
    assert "worker tuner0 ran 2 trials" in log["tuner0"].read_text()
    assert "worker tuner1 ran 0 trials" in logs["tuner1"]
    record = read_json(root / "runs" / run_id / "tune" / "stage.json")
    assert record["summary"]["tune_trials"] == 2


@pytest.mark.slow
def test_a_chief_takes_over_a_search_run_in_one_process(
    tiny_examples, make_ctx, config, monkeypatch
):
    """Keras Tuner reloads a search only from the tuner's own state file (chief.json): the
    chief must pick up the trials a single-process search (tuner0.json) already ran."""
    transformed = make_ctx({"examples": tiny_examples}, transform.SPEC.outputs)
    transform.run(transformed)
    config.model.family, config.tune.max_trials, config.tune.max_epochs = "dense", 2, 1
    ctx = make_ctx(dict(transformed.outputs), tune.SPEC.outputs, config)
    assert tune.run(ctx).metrics["tune_trials"] == 2
    monkeypatch.setenv("KERASTUNER_ORACLE_IP", "127.0.0.1")
    monkeypatch.setenv("KERASTUNER_ORACLE_PORT", str(free_port()))
    monkeypatch.setenv("KERASTUNER_TUNER_ID", "chief")
    assert distributed.tuner_role() == "chief"
    moments = read_json(transformed.outputs["transform_graph"] / "transform.json")

    name = tune.search_id(config, moments)

    def chief():
        return tune.make_tuner(
            "random", lambda hp: None, ctx.outputs["tuner_results"], name, config.seed, config.tune
        )

    assert len(chief().oracle.trials) == 0  # what Keras Tuner alone would do
    tuner = chief()
    distributed.resume_oracle(tuner)
    assert sorted(tuner.oracle.trials) == ["0", "1"]


@pytest.mark.parametrize("value", ["two", "0", "-1", ""])
def test_the_chief_refuses_a_worker_count_that_is_not_one(monkeypatch, value):
    monkeypatch.setenv("DAE_TUNER_WORKERS", value)
    with pytest.raises(StageError, match=f"DAE_TUNER_WORKERS must be a positive number.*{value!r}"):
        distributed.chief_waits_for(None)


def test_without_a_worker_count_the_chief_follows_keras_tuner(monkeypatch):
    monkeypatch.delenv("DAE_TUNER_WORKERS", raising=False)
    assert distributed.chief_waits_for(None) == 0  # the oracle is left as it is


def test_tuner_roles_follow_keras_tuners_rule(monkeypatch):
    for name in OURS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KERASTUNER_TUNER_ID", "tuner0")
    assert distributed.tuner_role() is None  # no oracle address: a search on its own
    monkeypatch.setenv("KERASTUNER_ORACLE_IP", "127.0.0.1")
    with pytest.raises(StageError, match="KERASTUNER_ORACLE_PORT"):
        distributed.tuner_role()
    monkeypatch.setenv("KERASTUNER_ORACLE_PORT", "8000")
    assert distributed.tuner_role() == "tuner0"
    monkeypatch.setenv("KERASTUNER_TUNER_ID", "chief")
    assert distributed.tuner_role() == "chief"


# ---- MultiWorkerMirroredStrategy ---------------------------------------------------------


def _train(root: Path, run_id: str, tmp_path: Path, sets: list[str]) -> dict[str, str]:
    """`dae stage train` as two workers of one cluster; returns their logs."""
    hosts = [f"127.0.0.1:{free_port()}" for _ in range(2)]
    args = ["stage", "train", "--run", run_id, "--root", str(root), *sets]
    procs = {}
    for i in range(2):
        config = {"cluster": {"worker": hosts}, "task": {"type": "worker", "index": i}}
        log, tmp = tmp_path / f"worker{i}.log", tmp_path / f"tmp{i}"
        tmp.mkdir(parents=True)
        procs[f"worker{i}"] = _start(args, log, TF_CONFIG=json.dumps(config), TMPDIR=str(tmp)), log
    logs = _finish(procs, timeout=150)
    assert not any((tmp_path / "tmp1").iterdir())  # the worker's throwaway copy is gone
    return logs


def _digests(logs: dict[str, str]) -> dict[str, str]:
    return {name: DIGEST.search(text).group(1) for name, text in logs.items()}


@pytest.mark.slow
def test_two_workers_train_one_model(run, tmp_path):
    import keras

    root, run_id = run
    out = root / "runs" / run_id / "train"
    digests = _digests(_train(root, run_id, tmp_path, EXACT_SETS))
    # Both workers end with bit-identical weights, and the chief's artifact holds them.
    assert digests["worker0"] == digests["worker1"]
    saved = keras.models.load_model(out / "model" / "model.keras", compile=False)
    assert distributed.weights_digest(saved) == digests["worker0"]
    record = read_json(out / "stage.json")  # the chief's alone
    assert record["summary"]["train_weights_sha256"] == digests["worker0"]
    assert record["summary"]["train_workers"] == 2 and "worker" not in record["summary"]
    history = read_json(out / "model_run" / "history.json")
    assert len(history["loss"]) == 2 and history["loss"][1] < history["loss"][0]
    # The pair trains as one process does: the same steps, gradients averaged over the
    # global batch, the same metrics (the sharded data and the loss scaling are right).
    subprocess.run(
        [DAE, "stage", "train", "--run", run_id, "--root", str(root), *EXACT_SETS],
        check=True,
        capture_output=True,
        timeout=150,
        env={k: v for k, v in os.environ.items() if k not in OURS},
    )
    alone = read_json(out / "model_run" / "history.json")
    for key in ("loss", "val_loss", "learning_rate"):
        assert history[key] == pytest.approx(alone[key], rel=1e-5), key

    # An interrupted job resumes on every worker from the chief's epoch backup (a worker
    # resuming from its own, lost with its throwaway folder, would start over and hang).
    backup = _backup_dir(root, run_id, out)
    backup.mkdir()
    shutil.copy(out / "model" / "best.weights.h5", backup / "latest.weights.h5")
    (backup / "training_metadata.json").write_text('{"epoch": 1, "batch": 0}')
    digests = _digests(_train(root, run_id, tmp_path / "resumed", EXACT_SETS))
    assert digests["worker0"] == digests["worker1"]
    resumed = read_json(out / "model_run" / "history.json")
    assert len(resumed["loss"]) == 1  # the second epoch only
    assert resumed["learning_rate"] == pytest.approx(history["learning_rate"][1:])


def _backup_dir(root: Path, run_id: str, out: Path) -> Path:
    """Where this training job keeps its epoch backups (train's own key)."""
    from dae.components import train
    from dae.pipeline.config import apply_overrides
    from dae.pipeline.runner import load_run_config, output_uri

    cfg = apply_overrides(load_run_config(root, run_id), EXACT_SETS[1::2])
    rdir = root / "runs" / run_id
    best = read_json(output_uri(rdir, "tune", "best_hyperparameters") / "best_hyperparameters.json")
    moments = read_json(output_uri(rdir, "transform", "transform_graph") / "transform.json")
    key = train._backup_key(best, moments, cfg.train, cfg.model.beta)
    return Path(read_json(out / "stage.json")["outputs"]["checkpoints"]) / key


@pytest.mark.slow
def test_a_vae_trains_under_the_strategy(run, tmp_path):
    """The VAE's own train_step (a sampled latent, its own loss trackers) under the
    strategy too: a fixed small VAE architecture keeps it quick."""
    root, run_id = run
    sets = [*TRAIN_SETS, "--set", "model.baseline=seed_vae_128"]
    env = {k: v for k, v in os.environ.items() if k not in OURS}
    subprocess.run(
        [DAE, "stage", "tune", "--run", run_id, "--root", str(root), *sets],
        check=True,
        capture_output=True,
        timeout=150,
        env=env,
    )
    digests = _digests(_train(root, run_id, tmp_path, sets))
    assert digests["worker0"] == digests["worker1"]
    history = read_json(root / "runs" / run_id / "train" / "model_run" / "history.json")
    assert {"kl", "reconstruction", "val_mse"} <= set(history)
    assert read_json(root / "runs" / run_id / "train" / "model" / "model.json")["vae"] is True


def test_tf_config_decides_between_one_process_and_a_cluster(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert distributed.cluster_size() == 0 and distributed.training_job() is None
    one = {"cluster": {"worker": ["127.0.0.1:2222"]}, "task": {"type": "worker", "index": 0}}
    assert distributed.cluster_size(json.dumps(one)) == 1  # one worker: the plain path
    monkeypatch.setenv("TF_CONFIG", json.dumps(one))
    assert distributed.training_job() is None
    three = {"cluster": {"chief": ["a:1"], "worker": ["b:1", "c:1"]}}
    assert distributed.cluster_size(json.dumps(three)) == 3
    with pytest.raises(StageError, match="TF_CONFIG"):
        distributed.cluster_size("{not json")


def test_a_worker_writes_to_a_throwaway_copy_seeded_with_the_chiefs_backup(tmp_path):
    backup = tmp_path / "backup"
    backup.mkdir()
    (backup / "training_metadata.json").write_text('{"epoch": 3}')
    model, logs = tmp_path / "model", tmp_path / "logs"
    with distributed.worker_dirs(None, model, logs, backup=backup) as dirs:
        assert dirs == (model, logs, backup)  # one process: the real folders
    chief = TrainingJob(strategy=None, workers=2, index=0, chief=True)
    with distributed.worker_dirs(chief, model, logs, backup=backup) as dirs:
        assert dirs == (model, logs, backup)
    worker = TrainingJob(strategy=None, workers=2, index=1, chief=False)
    with distributed.worker_dirs(worker, model, logs, backup=backup) as dirs:
        assert all(d.is_dir() and tmp_path not in d.parents for d in dirs)
        # Resumes from the chief's epoch, writes its own backups elsewhere.
        assert (dirs[2] / "training_metadata.json").read_text() == '{"epoch": 3}'
        (dirs[0] / "model.keras").write_text("x")
    assert not dirs[0].exists() and not model.exists()


@pytest.mark.parametrize(
    "stage, env, expected",
    [
        ("tune", {}, False),
        (
            "tune",
            {
                "KERASTUNER_ORACLE_IP": "h",
                "KERASTUNER_ORACLE_PORT": "1",
                "KERASTUNER_TUNER_ID": "chief",
            },
            False,
        ),
        (
            "tune",
            {
                "KERASTUNER_ORACLE_IP": "h",
                "KERASTUNER_ORACLE_PORT": "1",
                "KERASTUNER_TUNER_ID": "tuner0",
            },
            True,
        ),
        (
            "train",
            {
                "TF_CONFIG": json.dumps(
                    {"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 0}}
                )
            },
            False,
        ),
        (
            "train",
            {
                "TF_CONFIG": json.dumps(
                    {"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}}
                )
            },
            True,
        ),
        (
            "train",
            {
                "TF_CONFIG": json.dumps(
                    {
                        "cluster": {"chief": ["a:1"], "worker": ["b:2"]},
                        "task": {"type": "worker", "index": 0},
                    }
                )
            },
            True,
        ),
        (
            "train",
            {
                "TF_CONFIG": json.dumps(
                    {"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 0}}
                )
            },
            False,
        ),
    ],
)
def test_only_the_chief_clears_a_distributed_stage_folder(monkeypatch, stage, env, expected):
    for name in OURS:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert distributed.secondary(stage) is expected
