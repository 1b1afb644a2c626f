"""How a run ends, written from what its stages recorded: metrics.json, run.json and the
store's record of the run. `dae run` ends its runs here; so do `dae runs finish` (every stage
of the run has succeeded, say in an orchestrator's Pods) and `dae runs fail` (an
orchestrator gave up on it). Nothing here imports a stage, so neither command loads
TensorFlow.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import yaml

from dae.artifacts import read_json, write_json
from dae.component import StageError
from dae.files import SUCCESS
from dae.pipeline.locks import root_lock
from dae.pipeline.metadata import MetadataStore, store_url

METRIC_KEYS = (
    "psnr_noisy",
    "psnr_denoised",
    "ssim_noisy",
    "ssim_denoised",
    "mse_noisy",
    "mse_denoised",
    "blessed",
    "blessing_reason",
    "pushed_version",
)
ENDED = ("succeeded", "failed")


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def pipeline_root(root: Path | str) -> Path:
    """The root as every record names it: resolved, so the paths a run records lead to its
    artifacts from any working directory (`--root` defaults to the relative ./dae-root)."""
    return Path(root).expanduser().resolve()


def run_dir(root: Path, run_id: str) -> Path:
    return Path(root) / "runs" / run_id


def update_run(rdir: Path, **fields: Any) -> dict[str, Any]:
    record = read_json(rdir / "run.json") if (rdir / "run.json").exists() else {}
    record.update(fields)
    write_json(rdir / "run.json", record)
    return record


def write_metrics(rdir: Path, stages: dict[str, dict], status: str, error: str | None = None):
    """metrics.json: every stage's metrics, with the contract's keys always present.
    `stages`: {name: {"seconds", "metrics", "cached"}}, in the DAG's order."""
    metrics: dict[str, Any] = dict.fromkeys(METRIC_KEYS)
    for stage in stages.values():
        metrics.update(stage["metrics"])
    metrics["blessed"] = bool(metrics["blessed"])
    metrics |= {
        "run_id": rdir.name,
        "status": status,
        "stage_seconds": {k: v["seconds"] for k, v in stages.items()},
        "cached_stages": [k for k, v in stages.items() if v["cached"]],
    }
    if error:
        metrics["error"] = error
    write_json(rdir / "metrics.json", metrics)
    update_run(rdir, status=status, finished=now(), error=error)
    return metrics


def run_fields(metrics: dict) -> dict:
    """What the store keeps of a finished run (what `dae runs list` shows)."""
    keys = ("status", "error", "pushed_version", "psnr_denoised", "psnr_noisy", "blessed")
    return {k: metrics.get(k) for k in keys} | {
        "finished": now(),
        "seconds": round(sum(metrics["stage_seconds"].values()), 2),
    }


def recorded_stages(rdir: Path, names: list[str]) -> dict[str, dict]:
    """The stages of a run that succeeded, as their stage.json records them."""
    out = {}
    for name in names:
        if (rdir / name / SUCCESS).exists() and (rdir / name / "stage.json").is_file():
            record = read_json(rdir / name / "stage.json")
            metrics = record.get("summary") or {}
            out[name] = {
                "seconds": record.get("seconds", 0.0),
                "metrics": metrics,
                "cached": bool(record.get("cached")),
            }
    return out


def _url(root: Path, rdir: Path) -> str:
    """The run's store: its recorded config's metadata_url, else the environment's."""
    configured = None
    if (rdir / "config.yaml").is_file():
        configured = (yaml.safe_load((rdir / "config.yaml").read_text()) or {}).get("metadata_url")
    return store_url(configured, root)


def finish_run(root: Path, run_id: str) -> dict[str, Any]:
    """End a run whose every stage has succeeded: metrics.json, run.json, the store's record."""
    root = pipeline_root(root)
    rdir = run_dir(root, run_id)
    if not (rdir / "run.json").is_file():
        raise StageError(f"no run '{run_id}' under {root / 'runs'}")
    url = _url(root, rdir)
    with root_lock(root, f"dae runs finish {run_id}", shared=True, url=url):
        stages = read_json(rdir / "run.json").get("stages", [])
        missing = [s for s in stages if not (rdir / s / SUCCESS).exists()]
        if missing:
            raise StageError(
                f"run '{run_id}' cannot finish: {', '.join(missing)} "
                f"{'has' if len(missing) == 1 else 'have'} not succeeded"
            )
        metrics = write_metrics(rdir, recorded_stages(rdir, stages), "succeeded")
        store = MetadataStore(url)
        # An attempt an orchestrator retried (its Pod lost) left its execution running.
        store.abandon_running(run_id, "interrupted: its process was lost (the step was retried)")
        _record(store, run_id, run_fields(metrics))
    return metrics


def fail_run(root: Path, run_id: str, reason: str) -> str:
    """Record a run as failed (an orchestrator's exit handler): its executions still marked
    running, the run in the store (even one never created: its first step failed), and its
    folder's run.json and metrics.json. A run that already ended is left as it is: a
    workflow that failed because its run id was taken must not rewrite that run."""
    root = pipeline_root(root)
    root.mkdir(parents=True, exist_ok=True)  # a run that failed before its root existed
    rdir = run_dir(root, run_id)
    url = _url(root, rdir)
    store = MetadataStore(url)
    known = {r["name"]: r["properties"] for r in store.runs()}
    status = known.get(run_id, {}).get("status")
    if status in ENDED:
        return f"run {run_id} already ended ({status}); nothing recorded"
    with root_lock(root, f"dae runs fail {run_id}", shared=True, url=url):
        store.abandon_running(run_id, reason)
        fields: dict[str, Any] = {"status": "failed", "error": reason, "finished": now()}
        if (rdir / "run.json").is_file():
            stages = read_json(rdir / "run.json").get("stages", [])
            metrics = write_metrics(rdir, recorded_stages(rdir, stages), "failed", reason)
            fields = run_fields(metrics)
        _record(store, run_id, fields)
    return f"run {run_id}: failed ({reason})"


def _record(store: MetadataStore, run_id: str, fields: dict) -> None:
    store.update_context(store.context("run", run_id), **fields, updated=now())


def failure_reason(reason: str, failures: str | None) -> str:
    """One line from a reason and an orchestrator's failed steps (Argo's
    `workflow.failures`: a JSON list of {displayName, message, ...})."""
    reason = reason or "failed"
    try:
        steps = json.loads(failures) if failures else []
    except ValueError:
        steps = []
    named = [
        f"{s.get('displayName', '?')}: {s.get('message') or s.get('phase', '')}"
        for s in steps
        if isinstance(s, dict)
    ]
    text = f"{reason}: {'; '.join(named)}" if named else reason
    return " ".join(text.split())[:500]
