"""`dae runs list`, `dae runs show RUN_ID`, `dae lineage NAME VERSION`: what the metadata
store knows, for people."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path

from dae.artifacts import Artifact
from dae.component import StageError
from dae.pipeline.metadata import MetadataStore


def _fmt(value, spec: str = "") -> str:
    return "-" if value is None else format(value, spec)


def runs_list(store: MetadataStore) -> str:
    rows = [
        f"{'run':<24} {'started':<25} {'status':<10} {'seconds':>8} {'pushed':>6} {'PSNR dB':>8}"
    ]
    for r in store.runs():
        p = r["properties"]
        rows.append(
            f"{r['name']:<24} {p.get('started', '-'):<25} {p.get('status', '-'):<10} "
            f"{_fmt(p.get('seconds'), '.1f'):>8} {_fmt(p.get('pushed_version')):>6} "
            f"{_fmt(p.get('psnr_denoised'), '.2f'):>8}"
        )
    return "\n".join(rows)


def runs_show(store: MetadataStore, run_id: str) -> str:
    runs = {r["name"]: r for r in store.runs()}
    if run_id not in runs:
        raise StageError(f"no run '{run_id}' in the metadata store")
    p = runs[run_id]["properties"]
    lines = [
        f"run {run_id}: {p.get('status')}, started {p.get('started')}, "
        f"code {p.get('code_version', '-')}"
    ]
    if p.get("error"):
        lines.append(f"error: {p['error']}")
    executions = store.executions_of_run(run_id)
    invalidated = _invalidated(executions, p.get("invalidated") or {})
    for ex in executions:
        origin = f" (from execution {ex['cached_from']})" if ex["cached_from"] else ""
        status, why = ex["status"], invalidated.get(ex["id"])
        if why:
            status, origin = "invalidated", f"{origin}  ({why})"
        lines.append(
            f"  {ex['component']:<10} {status:<9} {_fmt(ex['seconds'], '.2f'):>8} s"
            f"{origin}" + (f"  error: {ex['error']}" if ex["error"] else "")
        )
        for name, art in store.artifacts_of(ex["id"]).items():
            lines.append(f"      {name:<22} {art['fingerprint'][:12]:<12}  {art['uri']}")
    return "\n".join(lines)


def _invalidated(executions: list[dict], stages: dict[str, str]) -> dict[int, str]:
    """{execution id: why} for the last successful execution of each invalidated stage
    (`dae stage` re-ran something it read, and its output changed)."""
    last = {
        ex["component"]: ex["id"] for ex in executions if ex["status"] in ("succeeded", "cached")
    }
    return {last[stage]: why for stage, why in stages.items() if stage in last}


def _servable(store: MetadataStore, root: Path, name: str, version: int) -> tuple[dict, Callable]:
    """A servable's record, and where the paths its run recorded are now. Paths are
    recorded resolved; older runs recorded them as their --root was given, relative to
    their cwd: a record "dae-root/serving/..." is this root's if the root ends in dae-root."""
    tail = Path("serving") / name / str(version)
    for base in dict.fromkeys((root.resolve(), root.absolute())):
        found = store.artifacts_by_uri(str(base / tail))
        if found:
            return found[0], Path
    for art in store.artifacts_ending(str(tail)):
        given = Path(art["uri"]).parts[: -len(tail.parts)]
        if not Path(art["uri"]).is_absolute() and _names(root.resolve(), given):
            return art, functools.partial(_relocated, given=given, root=root.resolve())
    raise StageError(f"no record of {name} version {version} under {root / 'serving'}")


def _names(root: Path, given: tuple[str, ...]) -> bool:
    """Can `given` (a relative path, as a --root was given) name `root`?"""
    parts = [p for p in given if p != "."]
    while parts and parts[0] == "..":
        parts.pop(0)
    return ".." not in parts and list(root.parts[len(root.parts) - len(parts) :]) == parts


def _relocated(uri: str, given: tuple[str, ...], root: Path) -> Path:
    parts = Path(uri).parts
    if not Path(uri).is_absolute() and parts[: len(given)] == given:
        return root.joinpath(*parts[len(given) :])
    return Path(uri)


def lineage(store: MetadataStore, root: Path, name: str, version: int) -> dict:
    """Everything that produced a served version, traced back through the store."""
    root = Path(root)
    servable, located = _servable(store, root, name, version)
    push = store.producer_of(servable["id"])
    uri = str(located(servable["uri"]))
    chain, frontier, out = {}, [push], {"servable": uri, "fingerprint": servable["fingerprint"]}
    while frontier:
        ex = frontier.pop()
        chain[ex["component"]] = ex
        for art in store.artifacts_of(ex["id"], "input").values():
            producer = store.producer_of(art["id"])
            if producer and producer["component"] not in chain:
                frontier.append(producer)
    out["run_id"] = push["run_id"]
    out["executions"] = {
        c: {"run_id": e["run_id"], "id": e["id"], "code": e["code_fingerprint"]}
        for c, e in chain.items()
    }
    run = {r["name"]: r["properties"] for r in store.runs()}.get(push["run_id"], {})
    out["code_version"] = run.get("code_version")
    for ex in chain.values():  # what each artifact's type says of it: the dataset, the hps
        for art in store.artifacts_of(ex["id"]).values():
            kind = Artifact.TYPES.get(art["type"], Artifact)
            if located(art["uri"]).exists():
                out |= kind.describe(located(art["uri"]))
    config = root.resolve() / "runs" / push["run_id"] / "config.yaml"
    out["config"] = str(config) if config.is_file() else None
    return out


def lineage_text(info: dict) -> str:
    ds = info.get("dataset", {})
    lines = [
        f"servable: {info['servable']} (model sha256 {str(info['fingerprint'])[:16]})",
        f"run: {info['run_id']}  config: {info['config']}",
        f"code version: {info['code_version']}",
        f"dataset: {ds.get('dataset')} {ds.get('version')} splits {ds.get('splits')} "
        f"fingerprint {str(ds.get('sha256'))[:16]}",
        f"hyperparameters: {json.dumps(info.get('hyperparameters'))}",
        "executions: "
        + ", ".join(f"{c} <- run {e['run_id']}" for c, e in info["executions"].items()),
    ]
    return "\n".join(lines)
