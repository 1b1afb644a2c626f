"""Tune (TFX's Tuner): Keras Tuner searches a family's architecture, learning rate (and a
VAE's beta) on a subset; with `tune.families` the family itself is searched too.

Trials are ranked by validation MSE, which every family reports alike (a VAE's loss is in
nats per image, an autoencoder's in nats per pixel). A `model.baseline` is a fixed seed
architecture: nothing to search. The search directory lives in the stage's output with
overwrite=False, so an interrupted search picks up its finished trials instead of starting
over.

Distributed (Keras Tuner's chief/worker mode, `components.distributed`): every process
runs this stage with the same config; the chief serves the oracle and writes the best
hyperparameters once the workers are done, a worker runs trials, writes what it reported
to `<search>/workers/<tuner id>.json` and leaves the stage's record to the chief.
"""

from __future__ import annotations

import hashlib
import os
from functools import cache, partial
from pathlib import Path
from typing import Any

from dae import compat
from dae.artifacts import (
    Examples,
    HyperParameters,
    TransformGraph,
    WorkingState,
    read_json,
    read_split,
    write_json,
)
from dae.component import Spec, StageContext, StageResult, pick
from dae.components import distributed
from dae.components.models import OBJECTIVE, build_model, hyperparameters, precision

# ---- pure core -------------------------------------------------------------------------


class _ReportsTrials:
    """Mixed into Keras Tuner's tuner classes: its on_trial_end hook, overridden, advances
    `progress` (if set, `report_trials`) with each finished trial's score and the best."""

    progress = None

    def on_trial_end(self, trial):
        super().on_trial_end(trial)
        if self.progress is not None:
            best = self.oracle.get_best_trials(1)
            self.progress.advance(score=trial.score, best=best[0].score if best else None)


@cache
def _tuner_class(kind: str) -> type:
    """Keras Tuner's tuner for `kind`, with dae's progress reports."""
    import keras_tuner as kt

    bases = {
        "hyperband": kt.Hyperband,
        "random": kt.RandomSearch,
        "bayesian": kt.BayesianOptimization,
    }
    if kind not in bases:
        raise ValueError(f"unknown tuner {kind!r}")
    return type(bases[kind].__name__, (_ReportsTrials, bases[kind]), {"__module__": __name__})


def make_tuner(kind: str, hypermodel, directory, project: str, seed: int, tune_cfg):
    """One of Keras Tuner's own oracles, chosen by name."""
    import keras_tuner as kt

    compat.atomic_tuner_state()
    tuner = _tuner_class(kind)
    common = dict(
        objective=kt.Objective(OBJECTIVE, "min"),
        directory=str(directory),
        project_name=project,
        seed=seed,
        overwrite=False,
    )
    if kind == "hyperband":
        return tuner(
            hypermodel, max_epochs=tune_cfg.max_epochs, factor=tune_cfg.hyperband_factor, **common
        )
    return tuner(hypermodel, max_trials=tune_cfg.max_trials, **common)


def search(tuner, train, valid, epochs: int, batch_size: int, best: bool = True):
    """Run the search on (noisy, clean) arrays; returns the best HyperParameters (a
    distributed worker passes best=False: only the chief's oracle knows them)."""
    import keras_tuner as kt

    hyperband = isinstance(tuner.oracle, kt.oracles.HyperbandOracle)
    kwargs = {} if hyperband else {"epochs": epochs}  # Hyperband schedules epochs itself
    tuner.search(
        train[0], train[1], validation_data=valid, batch_size=batch_size, verbose=0, **kwargs
    )
    return tuner.get_best_hyperparameters(1)[0] if best else None


def families(cfg) -> list[str]:
    return list(cfg.tune.families or [cfg.model.family])


def planned_trials(tuner) -> int | None:
    import keras_tuner as kt

    if isinstance(tuner.oracle, kt.oracles.HyperbandOracle):
        return compat.hyperband_trials(tuner.oracle)
    return tuner.oracle.max_trials


def report_trials(tuner, progress) -> None:
    """Each finished trial: its score and the best so far (make_tuner's tuners report)."""
    tuner.progress = progress


def search_id(cfg, moments: dict) -> str:
    """Names the search by what defines it, so a resumed search is the same search (more
    trials may be asked for) and a different one starts afresh beside it."""
    t = cfg.tune
    key = (
        families(cfg),
        cfg.model.beta,
        OBJECTIVE,
        t.tuner,
        t.max_epochs,
        t.hyperband_factor,
        t.batch_size,
        t.train_examples,
        t.eval_examples,
        cfg.seed,
        moments["shape"],
        precision(cfg.model.precision),
    )
    name = "+".join(families(cfg))
    return f"{name}-{t.tuner}-" + hashlib.sha256(repr(key).encode()).hexdigest()[:10]


# ---- artifact I/O ----------------------------------------------------------------------


def _write(ctx, family: str, searched: list[str], hp) -> None:
    write_json(
        ctx.outputs["best_hyperparameters"] / HyperParameters.FILE,
        {"family": family, "families": searched, "values": hp.values, "config": hp.get_config()},
    )


def run(ctx: StageContext) -> StageResult:
    import keras

    cfg = ctx.config
    role = distributed.tuner_role()
    worker = secondary()
    if cfg.model.baseline and worker:
        return StageResult({"tuner_id": role, "tune_trials_run": 0}, worker=True)
    if cfg.model.baseline:
        _write(ctx, cfg.model.baseline, [cfg.model.baseline], hyperparameters())
        ctx.log(f"tune: baseline {cfg.model.baseline} is a fixed architecture; no search")
        return StageResult({"tune_trials": 0, "tune_best_score": None})
    examples = ctx.inputs["transformed_examples"]
    moments = read_json(ctx.inputs["transform_graph"] / TransformGraph.FILE)
    keras.utils.set_random_seed(cfg.seed)
    train = read_split(examples, "train", ("noisy", "clean"), cfg.tune.train_examples)
    valid = read_split(examples, "eval", ("noisy", "clean"), cfg.tune.eval_examples)
    hypermodel = partial(
        build_model,
        family=families(cfg),
        shape=moments["shape"],
        mean=moments["mean"],
        std=moments["std"],
        beta=cfg.model.beta,
        policy=precision(cfg.model.precision),
    )
    tuner = make_tuner(
        cfg.tune.tuner,
        hypermodel,
        ctx.outputs["tuner_results"],
        search_id(cfg, moments),
        cfg.seed,
        cfg.tune,
    )
    data = (train["noisy"], train["clean"]), (valid["noisy"], valid["clean"])
    if worker:
        return _work(ctx, tuner, role, data)
    distributed.resume_oracle(tuner)
    if role == "chief":
        waits = distributed.chief_waits_for(tuner)
        until = f" until {waits} workers have been told the search is over" if waits else ""
        ctx.log(
            f"tune: chief serving the oracle on port {os.environ['KERASTUNER_ORACLE_PORT']}{until}"
        )
    progress = ctx.progress("trial", planned_trials(tuner))
    report_trials(tuner, progress)
    best = search(tuner, *data, cfg.tune.max_epochs, cfg.tune.batch_size)
    progress.close()
    trials = tuner.oracle.get_best_trials(1)
    score = trials[0].score if trials else None
    _write(ctx, best.values.get("family", families(cfg)[0]), families(cfg), best)
    n_trials = len(tuner.oracle.trials)
    ctx.log(f"tune: {n_trials} trials, best {OBJECTIVE}={score:.4f} {best.values}")
    return StageResult({"tune_trials": n_trials, "tune_best_score": score})


def _work(ctx, tuner, tuner_id: str, data) -> StageResult:
    """A distributed worker: run the trials the chief hands out, keep what they scored."""
    cfg = ctx.config
    trials = distributed.record_trials(tuner, OBJECTIVE)
    ctx.log(f"tune: worker {tuner_id} asking the chief for trials")
    search(tuner, *data, cfg.tune.max_epochs, cfg.tune.batch_size, best=False)
    path = Path(tuner.project_dir) / "workers" / f"{tuner_id}.json"
    earlier = read_json(path) if path.is_file() else {}  # a restarted worker keeps its past
    write_json(path, {**earlier, **trials})
    scores = ", ".join(f"{k}: {v.get('score')}" for k, v in trials.items())
    ctx.log(f"tune: worker {tuner_id} ran {len(trials)} trials ({scores})")
    return StageResult({"tuner_id": tuner_id, "tune_trials_run": len(trials)}, worker=True)


def secondary() -> bool:
    """A tuner worker (not the chief): it leaves the stage's folder and record alone."""
    return distributed.tuner_role() not in (None, "chief")


def parameters(cfg) -> dict[str, Any]:
    """What the search depends on: a fixed baseline is no search at all, Hyperband sets
    its own trial count, and the other tuners have no brackets."""
    if cfg.model.baseline:
        return pick(cfg, ("model.baseline",))
    per_tuner = "tune.hyperband_factor" if cfg.tune.tuner == "hyperband" else "tune.max_trials"
    common = ("tuner", "max_epochs", "families", "batch_size", "train_examples", "eval_examples")
    picked = pick(cfg, ("seed", "model", per_tuner, *(f"tune.{k}" for k in common)))
    picked["model"] = {**picked["model"], "precision": precision(cfg.model.precision)}
    return picked


SPEC = Spec(
    inputs={"transformed_examples": Examples, "transform_graph": TransformGraph},
    outputs={"best_hyperparameters": HyperParameters, "tuner_results": WorkingState},
    parameters=parameters,
    resumable=("tuner_results",),  # re-running the stage keeps finished trials
    secondary=secondary,
)
