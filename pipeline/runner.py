"""Runs the DAG: one folder per run, one per stage, timings and a metrics.json at the end,
every execution and artifact recorded in the metadata store, and cached stages skipped.

A stage's outputs count only once `<stage>/_SUCCESS` exists; a stage that failed or was
killed leaves no marker, so nothing downstream (and no later `dae stage`) can use them, and
its execution is recorded failed, never a cache hit. Resumable working state (the tuner's
trials, training backups) lives in `<root>/work/<stage>/<cache key>/`, so the next run with
the same inputs picks it up. Only the pusher writes outside the run folder, atomically.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
import secrets
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from dae.artifacts import read_json, write_json
from dae.component import StageContext, StageError, StageResult
from dae.files import SUCCESS
from dae.pipeline import invalidation
from dae.pipeline.cache import unread_settings
from dae.pipeline.config import Config, dump_config
from dae.pipeline.console import Console
from dae.pipeline.dag import DAG, STAGES, Node, node
from dae.pipeline.lifecycle import pipeline_root, run_dir, run_fields, update_run, write_metrics
from dae.pipeline.locks import root_lock
from dae.pipeline.metadata import store_url
from dae.pipeline.tracking import Outcome, Tracker, code_version, open_store

_DEFERRED = (signal.SIGINT, signal.SIGTERM)
RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


console = Console("plain")  # what a run shows; `dae run` sets it for its terminal


def log(message: str) -> None:
    console.log(message)


def new_run_id() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def output_uri(rdir: Path, producer: str, output: str) -> Path:
    """Where a run's stage output lives: its own folder, or a cached execution's."""
    record = rdir / producer / "stage.json"
    if record.is_file():
        uri = read_json(record).get("outputs", {}).get(output)
        if uri:
            return Path(uri)
    return rdir / producer / output


def resolve_inputs(n: Node, rdir: Path) -> dict[str, Path]:
    inputs = {}
    for name, ref in n.inputs.items():
        producer, output = ref.split(".")
        if not (rdir / producer / SUCCESS).exists():
            raise StageError(f"stage '{n.name}' needs '{producer}', which has not succeeded")
        inputs[name] = output_uri(rdir, producer, output)
    return inputs


def execute(
    n: Node,
    config: Config,
    rdir: Path,
    serving_dir: Path,
    inputs: dict[str, Path] | None = None,
    work: Path | None = None,
) -> Outcome:
    """Run one stage of an existing run; its previous outputs, if any, are replaced.
    Resumable outputs go to `work` (kept across executions) when given."""
    spec = n.component.SPEC
    inputs = resolve_inputs(n, rdir) if inputs is None else inputs
    sdir = rdir / n.name
    if not spec.secondary():  # a distributed job's chief clears its folder, not its workers
        (sdir / SUCCESS).unlink(missing_ok=True)
        if sdir.is_dir():
            for child in sdir.iterdir():
                if work is not None or child.name not in spec.resumable:
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
    outputs = {}
    for name in spec.outputs:
        if name in spec.resumable and work is not None:
            outputs[name] = work / name
        else:  # an output named like its stage is the stage folder itself (runs/<id>/report/)
            outputs[name] = sdir if name == n.name else sdir / name
        outputs[name].mkdir(parents=True, exist_ok=True)
    ctx = StageContext(
        config,
        inputs,
        outputs,
        rdir.name,
        rdir,
        serving_dir,
        log,
        lambda unit, total: console.progress(n.name, unit, total),
    )
    start = time.perf_counter()
    result = n.component.run(ctx)
    if not isinstance(result, StageResult):
        raise TypeError(f"stage '{n.name}' returned {type(result).__name__}, not a StageResult")
    seconds = round(time.perf_counter() - start, 2)
    outcome = Outcome(seconds, result.metrics, outputs, result.external, worker=result.worker)
    if not result.worker:  # a distributed job's workers leave the record to its chief
        _check_written(n, outputs)
        uris = {k: str(v) for k, v in outputs.items()}
        write_json(
            sdir / "stage.json", {"seconds": seconds, "summary": result.metrics, "outputs": uris}
        )
        (sdir / SUCCESS).touch()
    return outcome


def _check_written(n: Node, outputs: dict[str, Path]) -> None:
    """A stage succeeds only with every file its outputs' types require."""
    for name, kind in n.component.SPEC.outputs.items():
        for file in kind.REQUIRED:
            if not (outputs[name] / file).is_file():
                raise StageError(f"stage '{n.name}' wrote no {file} in its '{name}' output")


@contextlib.contextmanager
def _signals_deferred():
    """Hold SIGINT/SIGTERM until the block ends, so a push and its record happen together."""
    if threading.current_thread() is not threading.main_thread():
        yield []
        return
    caught: list[int] = []
    saved = {sig: signal.signal(sig, lambda s, _f: caught.append(s)) for sig in _DEFERRED}
    try:
        yield caught  # the caller re-raises once its record is written
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def _nothing():
    return contextlib.nullcontext([])


def preflight(config: Config) -> None:
    """Problems found before a run folder exists leave nothing behind."""
    for n in DAG:
        if n.component.SPEC.preflight is not None:
            n.component.SPEC.preflight(config)


def _finish(rdir: Path, results: dict[str, Outcome], status: str, error: str | None = None):
    """metrics.json: every stage's metrics, with the contract's keys always present."""
    stages = {
        k: {"seconds": v.seconds, "metrics": v.metrics, "cached": v.cached}
        for k, v in results.items()
    }
    return write_metrics(rdir, stages, status, error)


def _abandon_killed_runs(root: Path, store) -> None:
    """Runs of this root still marked running belong to a killed process (we hold the
    root's lock). A server database may hold other roots' runs: those are left alone."""
    for record in store.runs():
        run_id = record["name"]
        if record["properties"].get("status") == "running" and run_dir(root, run_id).is_dir():
            store.abandon_running(run_id, "interrupted: the process was killed")
            store.update_context(record["id"], status="failed", error="killed")
            if (run_dir(root, run_id) / "run.json").exists():
                update_run(run_dir(root, run_id), status="failed", error="killed")


def _run_node(n: Node, config: Config, rdir: Path, root: Path, tracker: Tracker) -> Outcome:
    inputs = resolve_inputs(n, rdir)
    arts = tracker.input_artifacts(n, inputs)
    k = tracker.key(n, arts)
    start = time.perf_counter()
    eid = tracker.start(n, k, arts)
    hit = tracker.hit(n, k["key"])
    if hit:
        return tracker.reuse(eid, n, rdir, hit, start)
    with _signals_deferred() if n.component.SPEC.atomic else _nothing() as caught:
        try:
            work = root / "work" / n.name / k["key"][:16]
            if not tracker.use_cache and not tracker.resume:  # --no-cache: from scratch
                shutil.rmtree(work, ignore_errors=True)
            outcome = execute(n, config, rdir, root / "serving", inputs, work)
        except BaseException as e:  # noqa: BLE001 - record every way a stage ends, re-raise
            message = str(e).splitlines()[0] if str(e) else type(e).__name__
            tracker.failed(eid, round(time.perf_counter() - start, 2), message)
            raise
        tracker.succeeded(eid, n, outcome)
    if caught:  # a signal arrived while the stage had to finish: it is honoured now
        outcome.interrupted = signal.Signals(caught[0]).name
    return outcome


def _open_run(config: Config, root: Path, run_id: str, store, use_cache: bool) -> Tracker:
    """A new run's folder, config, run.json and record in the store (the root is ours)."""
    _abandon_killed_runs(root, store)
    rdir = run_dir(root, run_id)
    rdir.mkdir(parents=True, exist_ok=False)
    dump_config(config, rdir / "config.yaml")
    started = _now()
    update_run(rdir, run_id=run_id, status="running", started=started, stages=list(STAGES))
    tracker = Tracker(store, root, run_id, config, use_cache)
    tracker.run_record(status="running", started=started, code_version=code_version())
    for setting in unread_settings(config, [n.component.SPEC for n in DAG]):
        log(f"note: {setting} has no effect: no stage reads it with this config")
    return tracker


def run_pipeline(
    config: Config, root: Path, run_id: str | None = None, use_cache: bool | None = None
) -> dict[str, Any]:
    """The whole DAG in order; returns metrics.json's content. Raises on a failed stage."""
    root = pipeline_root(root)
    preflight(config)
    run_id = run_id or new_run_id()
    use_cache = config.cache if use_cache is None else use_cache
    with root_lock(root, f"dae run {run_id}", url=store_url(config.metadata_url, root)):
        tracker = _open_run(config, root, run_id, open_store(config, root), use_cache)
        rdir = run_dir(root, run_id)
        results: dict[str, Outcome] = {}
        for n in DAG:
            log(f"[{n.name}] ...")
            try:
                results[n.name] = _run_node(n, config, rdir, root, tracker)
                if results[n.name].interrupted:
                    raise KeyboardInterrupt(results[n.name].interrupted)
            except BaseException as e:  # noqa: BLE001 - record every way a run ends
                message = str(e).splitlines()[0] if str(e) else type(e).__name__
                metrics = _finish(rdir, results, "failed", f"{n.name}: {message}")
                tracker.run_record(**run_fields(metrics))
                raise
            cached = " (cached)" if results[n.name].cached else ""
            log(f"[{n.name}] done in {results[n.name].seconds:.1f} s{cached}")
        metrics = _finish(rdir, results, "succeeded")
        tracker.run_record(**run_fields(metrics))
        return metrics


def create_run(config: Config, root: Path, run_id: str) -> bool:
    """Start a run as `dae run` does, under a given id, and run none of its stages: an
    orchestrator's first step, whose own stages follow as `dae stage`. The same call again
    (a retried step) finds it and returns False; a run id is used once."""
    if not RUN_ID.fullmatch(run_id):
        raise StageError(f"invalid run id {run_id!r}: letters, digits, '.', '_' and '-' only")
    root = pipeline_root(root)
    preflight(config)
    with root_lock(
        root, f"dae stage --create --run {run_id}", url=store_url(config.metadata_url, root)
    ):
        rdir = run_dir(root, run_id)
        if (rdir / "run.json").is_file():
            status = read_json(rdir / "run.json").get("status")
            if status != "running":
                raise StageError(f"run '{run_id}' already exists ({status}); a run id is used once")
            if load_run_config(root, run_id).to_dict() != config.to_dict():
                raise StageError(f"run '{run_id}' already exists with another config")
            return False
        if rdir.is_dir():  # a create killed before it wrote run.json: nothing ran in it
            shutil.rmtree(rdir)
        _open_run(config, root, run_id, open_store(config, root), config.cache)
        return True


def load_run_config(root: Path, run_id: str) -> Config:
    rdir = run_dir(root, run_id)
    if not (rdir / "config.yaml").is_file():
        raise StageError(f"no run '{run_id}' under {Path(root) / 'runs'}")
    return Config.model_validate(yaml.safe_load((rdir / "config.yaml").read_text()))


def _stage_node(stage: str) -> Node:
    if stage not in STAGES:
        raise StageError(f"unknown stage '{stage}' (stages: {', '.join(STAGES)})")
    return node(stage)


def run_stage(
    config: Config,
    root: Path,
    run_id: str,
    stage: str,
    overrides: list[str] = (),
    use_cache: bool = False,
) -> Outcome:
    """Re-run one stage of a run (never from cache, unless asked to behave as `dae run`
    would: then a cache hit is taken when the config allows it). What read an output of it
    that changed no longer counts (`invalidation`). A distributed job's secondary never
    takes a hit and settles nothing: its chief decides, and it runs with its peers."""
    n = _stage_node(stage)
    root = pipeline_root(root)
    rdir = run_dir(root, run_id)
    url = store_url(config.metadata_url, root)
    with root_lock(root, f"dae stage {stage} --run {run_id}", shared=True, url=url):
        store = open_store(config, root)
        secondary = n.component.SPEC.secondary()
        tracker = Tracker(store, root, run_id, config, use_cache and config.cache and not secondary)
        tracker.resume = True  # an explicit re-run picks up an interrupted one's state
        before = tracker.recorded_outputs(stage)
        held = set() if secondary else invalidation.hold(rdir, n, DAG)
        try:
            outcome = _run_node(n, config, rdir, root, tracker)
        except BaseException:
            if not secondary and not (rdir / stage / SUCCESS).exists():  # its outputs went
                try:
                    invalidation.settle(tracker, rdir, n, before, held, DAG, log, failed=True)
                except Exception as e:  # the stage's own error is the one to report
                    log(f"[{stage}] could not record what it invalidated: {e}")
            raise
        if not outcome.worker:
            invalidation.settle(tracker, rdir, n, before, held, DAG, log)
    if (rdir / stage / "stage.json").is_file() and not outcome.worker and not outcome.cached:
        record = read_json(rdir / stage / "stage.json")
        rerun = {} if use_cache else {"rerun": _now()}
        write_json(rdir / stage / "stage.json", {**record, **rerun, "overrides": list(overrides)})
    if outcome.interrupted:
        raise KeyboardInterrupt(outcome.interrupted)
    return outcome


def cached_stage(config: Config, root: Path, run_id: str, stage: str) -> Outcome | None:
    """Take a cache hit for one stage of a run, recorded as `dae run` records one; None,
    with nothing recorded, when there is none (or the config turns the cache off): the
    stage must then run, say as a distributed job its orchestrator starts."""
    n = _stage_node(stage)
    root = pipeline_root(root)
    rdir = run_dir(root, run_id)
    url = store_url(config.metadata_url, root)
    with root_lock(root, f"dae stage {stage} --cache-only --run {run_id}", shared=True, url=url):
        tracker = Tracker(open_store(config, root), root, run_id, config, config.cache)
        inputs = resolve_inputs(n, rdir)
        arts = tracker.input_artifacts(n, inputs)
        k = tracker.key(n, arts)
        hit = tracker.hit(n, k["key"])
        if hit is None:
            return None
        before = tracker.recorded_outputs(stage)
        held = invalidation.hold(rdir, n, DAG)
        start = time.perf_counter()
        outcome = tracker.reuse(tracker.start(n, k, arts), n, rdir, hit, start)
        invalidation.settle(tracker, rdir, n, before, held, DAG, log)
        return outcome
