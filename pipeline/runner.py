"""Runs the DAG: one folder per run, one per stage, timings and a metrics.json at the end.

A stage's outputs count only once `<stage>/_SUCCESS` exists; a stage that failed or was
killed leaves no marker, so nothing downstream (and no later `dae stage`) can use them.
Only the pusher writes outside the run folder, and it does so atomically.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import secrets
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from components.artifacts import StageContext, StageError, read_json, write_json
from pipeline.config import Config, dump_config
from pipeline.dag import DAG, STAGES, Node, node

SUCCESS = "_SUCCESS"
_DEFERRED = (signal.SIGINT, signal.SIGTERM)
METRIC_KEYS = ("psnr_noisy", "psnr_denoised", "ssim_noisy", "ssim_denoised", "mse_noisy",
               "mse_denoised", "blessed", "blessing_reason", "pushed_version")  # fmt: skip


def log(message: str) -> None:
    print(message, flush=True)


def new_run_id() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)


def run_dir(root: Path, run_id: str) -> Path:
    return Path(root) / "runs" / run_id


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _update_run(path: Path, **fields: Any) -> dict[str, Any]:
    record = read_json(path / "run.json") if (path / "run.json").exists() else {}
    record.update(fields)
    write_json(path / "run.json", record)
    return record


def execute(n: Node, config: Config, rdir: Path, serving_dir: Path) -> dict[str, Any]:
    """Run one stage of an existing run; its previous outputs, if any, are replaced."""
    inputs = {}
    for name, ref in n.inputs.items():
        producer, output = ref.split(".")
        if not (rdir / producer / SUCCESS).exists():
            raise StageError(f"stage '{n.name}' needs '{producer}', which has not succeeded")
        inputs[name] = rdir / producer / output
    sdir = rdir / n.name
    keep = getattr(n.component, "RESUMABLE", ())  # e.g. the tuner's finished trials
    (sdir / SUCCESS).unlink(missing_ok=True)
    if sdir.is_dir():
        for child in sdir.iterdir():
            if child.name not in keep:
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    # An output named like its stage is the stage folder itself (runs/<id>/report/...).
    outputs = {name: sdir if name == n.name else sdir / name for name in n.component.OUTPUTS}
    for path in outputs.values():
        path.mkdir(parents=True, exist_ok=True)
    ctx = StageContext(config, inputs, outputs, rdir.name, rdir, serving_dir, log)
    start = time.perf_counter()
    summary = n.component.run(ctx) or {}
    seconds = round(time.perf_counter() - start, 2)
    write_json(sdir / "stage.json", {"seconds": seconds, "summary": summary})
    (sdir / SUCCESS).touch()
    return {"seconds": seconds, **summary}


@contextlib.contextmanager
def _signals_deferred():
    """Hold SIGINT/SIGTERM until the block ends, so a push and its record happen together."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    saved = {sig: signal.signal(sig, lambda s, _f: caught.append(s)) for sig in _DEFERRED}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    if caught:
        raise KeyboardInterrupt(signal.Signals(caught[0]).name)


_nothing = contextlib.nullcontext


def preflight(config: Config) -> None:
    """Problems found before a run folder exists leave nothing behind."""
    for n in DAG:
        check = getattr(n.component, "preflight", None)
        if check is not None:
            check(config)


def _finish(rdir: Path, results: dict[str, dict], status: str, error: str | None = None):
    merged: dict[str, Any] = {}
    for summary in results.values():
        merged.update(summary)
    metrics = {k: merged.get(k) for k in METRIC_KEYS}
    evaluation = {k: v for k, v in results.get("evaluate", {}).items() if k != "seconds"}
    metrics |= evaluation  # every evaluator metric, not only the contract's
    metrics["blessed"] = bool(metrics["blessed"])
    metrics |= {"run_id": rdir.name, "status": status,
                "stage_seconds": {k: v["seconds"] for k, v in results.items()}}  # fmt: skip
    if error:
        metrics["error"] = error
    write_json(rdir / "metrics.json", metrics)
    _update_run(rdir, status=status, finished=_now(), error=error)
    return metrics


def run_pipeline(config: Config, root: Path, run_id: str | None = None) -> dict[str, Any]:
    """The whole DAG in order; returns metrics.json's content. Raises on a failed stage."""
    root = Path(root)
    preflight(config)
    run_id = run_id or new_run_id()
    rdir = run_dir(root, run_id)
    rdir.mkdir(parents=True, exist_ok=False)
    dump_config(config, rdir / "config.yaml")
    _update_run(rdir, run_id=run_id, status="running", started=_now(), stages=list(STAGES))
    results: dict[str, dict] = {}
    for n in DAG:
        log(f"[{n.name}] ...")
        atomic = _signals_deferred() if n.component.__dict__.get("ATOMIC") else _nothing()
        try:
            with atomic:
                results[n.name] = execute(n, config, rdir, root / "serving")
        except BaseException as e:  # noqa: BLE001 - record every way a run ends, then re-raise
            message = str(e).splitlines()[0] if str(e) else type(e).__name__
            _finish(rdir, results, "failed", f"{n.name}: {message}")
            raise
        log(f"[{n.name}] done in {results[n.name]['seconds']:.1f} s")
    return _finish(rdir, results, "succeeded")


def load_run_config(root: Path, run_id: str) -> Config:
    rdir = run_dir(root, run_id)
    if not (rdir / "config.yaml").is_file():
        raise StageError(f"no run '{run_id}' under {Path(root) / 'runs'}")
    return Config.model_validate(yaml.safe_load((rdir / "config.yaml").read_text()))


def downstream(stage: str) -> list[str]:
    """Every stage that reads, directly or not, what `stage` writes."""
    affected, out = {stage}, []
    for n in DAG:
        if any(ref.split(".")[0] in affected for ref in n.inputs.values()):
            affected.add(n.name)
            out.append(n.name)
    return out


def run_stage(
    config: Config, root: Path, run_id: str, stage: str, overrides: list[str] = ()
) -> dict[str, Any]:
    """Re-run one stage of a run. Stages downstream of it lose their _SUCCESS: they were
    computed from outputs that no longer exist."""
    if stage not in STAGES:
        raise StageError(f"unknown stage '{stage}' (stages: {', '.join(STAGES)})")
    rdir = run_dir(root, run_id)
    for later in downstream(stage):
        (rdir / later / SUCCESS).unlink(missing_ok=True)
    atomic = _signals_deferred() if node(stage).component.__dict__.get("ATOMIC") else _nothing()
    with atomic:
        result = execute(node(stage), config, rdir, Path(root) / "serving")
    record = read_json(rdir / stage / "stage.json")
    write_json(rdir / stage / "stage.json", {**record, "rerun": _now(), "overrides": overrides})
    return result
