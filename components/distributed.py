"""Distributed tune and train (not a stage): Keras Tuner's chief/worker mode and
MultiWorkerMirroredStrategy, both configured by the environment like their own tools.

Tuning: KERASTUNER_ORACLE_IP makes a search distributed (Keras Tuner's rule), the process
whose KERASTUNER_TUNER_ID contains "chief" serves the oracle over gRPC, every other one
runs the trials it is handed. Training: TF_CONFIG naming more than one task makes `train`
run under MultiWorkerMirroredStrategy; only the chief's files are the stage's outputs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dae import compat
from dae.component import StageError

# ---- tuning ----------------------------------------------------------------------------


def tuner_role() -> str | None:
    """None for a search on its own, "chief" for the oracle server, else the worker's tuner
    id. The same rule as keras_tuner's distribute utils, checked up front so a missing
    variable is a one-line error instead of a traceback."""
    if "KERASTUNER_ORACLE_IP" not in os.environ:
        return None
    for name in ("KERASTUNER_ORACLE_PORT", "KERASTUNER_TUNER_ID"):
        if not os.environ.get(name):
            raise StageError(f"KERASTUNER_ORACLE_IP is set but {name} is not")
    tuner_id = os.environ["KERASTUNER_TUNER_ID"]
    return "chief" if "chief" in tuner_id else tuner_id


def record_trials(tuner, objective: str) -> dict[str, dict[str, Any]]:
    """On a worker: each trial it ran as it reported it to the chief, {trial_id: {"values",
    "score", "status"}}, the values as the model was built (a build can add some). Filled
    in as the search goes: once a worker's search returns, the chief may be gone."""
    return compat.record_oracle_client_trials(tuner.oracle, objective)


TUNER_WORKERS = "DAE_TUNER_WORKERS"


def chief_waits_for(tuner) -> int:
    """On the chief: with DAE_TUNER_WORKERS=N it serves the oracle until N workers have been
    told the search is over, so a worker that starts after the others finished every trial
    is answered instead of waiting an hour for a chief that is gone. Returns N (0: unset,
    Keras Tuner's own rule)."""
    raw = os.environ.get(TUNER_WORKERS)
    if raw is None:
        return 0
    if not raw.strip().isdigit() or int(raw) < 1:
        raise StageError(f"{TUNER_WORKERS} must be a positive number of workers, not {raw!r}")
    compat.chief_waits_for_workers(tuner.oracle, int(raw))
    return int(raw)


def resume_oracle(tuner) -> None:
    """Keras Tuner reloads a search only when this tuner id's own state file exists, so a
    chief taking over a search run in one process (tuner0.json) would start it afresh and
    overwrite its trials. Reload the oracle from the project's oracle.json instead."""
    project = Path(tuner.project_dir)
    if (project / "oracle.json").is_file() and not tuner.oracle.trials:
        tuner.oracle.reload()


# ---- training --------------------------------------------------------------------------


@dataclass
class TrainingJob:
    strategy: Any  # tf.distribute.MultiWorkerMirroredStrategy
    workers: int
    index: int  # this task's place in the cluster, in the order TF_CONFIG lists them
    chief: bool  # writes the stage's outputs (TF's should_checkpoint)


def cluster_size(tf_config: str | None = None) -> int:
    """How many training tasks TF_CONFIG names (0 without one)."""
    raw = os.environ.get("TF_CONFIG", "") if tf_config is None else tf_config
    if not raw.strip():
        return 0
    try:
        cluster = json.loads(raw)["cluster"]
        return sum(len(cluster.get(job, ())) for job in ("chief", "worker"))
    except (ValueError, KeyError, TypeError) as e:
        raise StageError(f"TF_CONFIG is not a valid cluster description: {e}") from None


def training_job() -> TrainingJob | None:
    """A MultiWorkerMirroredStrategy when TF_CONFIG names more than one task, else None
    (one process, no strategy: exactly the single-machine path). Created before any other
    TensorFlow work, as collective ops require; it waits until every worker is up."""
    workers = cluster_size()
    if workers <= 1:
        return None
    import tensorflow as tf

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    resolver, spec = strategy.cluster_resolver, strategy.cluster_resolver.cluster_spec()
    chiefs = spec.num_tasks("chief") if "chief" in spec.jobs else 0
    index = resolver.task_id + (chiefs if resolver.task_type == "worker" else 0)
    compat.keras_multi_worker_fit()  # Keras 3 needs two fixes for fit under this strategy
    return TrainingJob(strategy, workers, index, bool(strategy.extended.should_checkpoint))


def secondary(stage: str) -> bool:
    """Is this process a helper of a distributed `stage` (a tuner worker, a training worker
    other than the chief)? Such a process must leave the stage folder, which the chief
    clears and fills, alone. Read from the environment only: no TensorFlow import."""
    if stage == "tune":
        return tuner_role() not in (None, "chief")
    if stage == "train" and cluster_size() > 1:
        tf_config = json.loads(os.environ["TF_CONFIG"])
        task, cluster = tf_config.get("task", {}), tf_config["cluster"]
        if "chief" in cluster:
            return task.get("type") != "chief"
        return not (task.get("type") == "worker" and int(task.get("index", 0)) == 0)
    return False


def scope(job: TrainingJob | None):
    """Where the model and its optimizer must be built."""
    return job.strategy.scope() if job else contextlib.nullcontext()


@contextlib.contextmanager
def worker_dirs(job: TrainingJob | None, *dirs: Path, backup: Path):
    """The directories a training process writes to. The chief (or a lone process) writes
    the real ones; another worker does the very same writes to a throwaway copy (TF's
    advice: a save may need every worker), seeded with the chief's epoch backup so that
    all workers resume from the same epoch."""
    if job is None or job.chief:
        yield (*dirs, backup)
        return
    tmp = Path(tempfile.mkdtemp(prefix=f"dae-train-worker{job.index}-"))
    try:
        mine = [tmp / f"{i}-{d.name}" for i, d in enumerate(dirs)]
        for d in mine:
            d.mkdir()
        if backup.is_dir():
            shutil.copytree(backup, tmp / "backup")
        yield (*mine, tmp / "backup")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def weights_digest(model) -> str:
    """sha256 of every weight's shape and bytes, in order: equal digests on all workers
    mean bit-identical models."""
    import numpy as np

    digest = hashlib.sha256()
    for w in model.get_weights():
        w = np.ascontiguousarray(w)
        digest.update(f"{w.dtype}{w.shape}".encode() + w.tobytes())
    return digest.hexdigest()
