"""Between the runner and the metadata store: cache keys, cache hits, execution records.

A cache hit is a previous successful execution of the same stage with the same key whose
outputs may still be reused (their artifact type says: still there; for a pushed servable,
still the very model that was pushed). Every stage is treated alike, through its SPEC.
"""

from __future__ import annotations

import importlib.util
import json
import pkgutil
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dae.artifacts import Artifact, write_json
from dae.component import External
from dae.files import SUCCESS
from dae.pipeline import cache
from dae.pipeline.dag import Node
from dae.pipeline.metadata import MetadataStore, now, store_url


@dataclass
class Outcome:
    """How a stage ended, as the runner records it."""

    seconds: float
    metrics: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, Path] = field(default_factory=dict)
    external: dict[str, External] = field(default_factory=dict)
    cached: bool = False
    worker: bool = False  # a distributed stage's secondary: the chief records the stage
    interrupted: str | None = None  # a signal that arrived while the stage had to finish


PACKAGE = "dae"  # the installed package whose source a run's code version names


def source_folders(package: str = PACKAGE) -> list[Path]:
    """Every folder the package is built from: its own and its subpackages' (dae's layers
    are top-level folders of the repository, linked or mapped into it). Imports nothing
    but the package itself."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return []
    folders = {Path(p).resolve() for p in spec.submodule_search_locations}
    for sub in pkgutil.iter_modules(spec.submodule_search_locations, f"{package}."):
        found = importlib.util.find_spec(sub.name) if sub.ispkg else None
        folders |= {Path(p).resolve() for p in (found and found.submodule_search_locations) or ()}
    return sorted(f for f in folders if not any(p in folders for p in f.parents))


def _git(folder: Path, *args: str) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(
            ["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return None


def code_version() -> str:
    """The git commit of the code when it runs from a checkout, "-dirty" when any of the
    package's folders has changes (untracked files included)."""
    folders = source_folders(PACKAGE)
    head = _git(folders[0], "rev-parse", "HEAD") if folders else None
    if head is None or head.returncode != 0:
        return "unknown"
    status = _git(folders[0], "status", "--porcelain", "--", *map(str, folders))
    dirty = status is None or status.returncode != 0 or status.stdout.strip()
    return head.stdout.strip() + ("-dirty" if dirty else "")


def open_store(config, root: Path) -> MetadataStore:
    return MetadataStore(store_url(config.metadata_url, root))


def _type(name: str) -> type[Artifact]:
    return Artifact.TYPES.get(name, Artifact)


class Tracker:
    """Records one run's executions and answers its cache lookups."""

    def __init__(self, store: MetadataStore, root: Path, run_id: str, config, use_cache: bool):
        self.store, self.root, self.run_id = store, Path(root), run_id
        self.config, self.use_cache = config, use_cache
        self.resume = use_cache  # reuse resumable working state (trials, backups)?
        self.pipeline_ctx = store.context("pipeline", config.pipeline_name)
        self.run_ctx = store.context("run", run_id)
        self.artifacts: dict[str, dict] = {}  # "stage.output" -> artifact row

    # -- keys and hits -------------------------------------------------------------------

    def input_artifacts(self, n: Node, inputs: dict[str, Path]) -> dict[str, dict]:
        out = {}
        for name, ref in n.inputs.items():
            art = self.artifacts.get(ref) or self._recorded(ref)
            if art is None or Path(art["uri"]) != Path(inputs[name]):
                kind = n.component.SPEC.inputs[name]
                art = {
                    "id": None,
                    "uri": str(inputs[name]),
                    "fingerprint": kind.fingerprint(inputs[name]),
                }
            out[name] = art
        return out

    def _recorded(self, ref: str) -> dict | None:
        """An upstream output of this run as the store knows it (for `dae stage`)."""
        producer, output = ref.split(".")
        return (self.recorded_outputs(producer) or {}).get(output)

    def recorded_outputs(self, stage: str) -> dict[str, dict] | None:
        """The outputs of the stage's last successful execution in this run (None: none)."""
        for ex in reversed(self.store.executions_of_run(self.run_id)):
            if ex["component"] == stage and ex["status"] in ("succeeded", "cached"):
                return self.store.artifacts_of(ex["id"])
        return None

    def key(self, n: Node, inputs: dict[str, dict]) -> dict[str, Any]:
        spec = n.component.SPEC
        params = spec.values(self.config)
        code = cache.code_fingerprint(n.component)
        extra = spec.external(self.config) if spec.external else ""
        fps = {k: a["fingerprint"] for k, a in inputs.items()}
        return {
            "key": cache.cache_key(n.name, fps, params, code, extra),
            "params": params,
            "code": code,
        }

    def hit(self, n: Node, key: str) -> tuple[dict, dict[str, dict]] | None:
        if not self.use_cache or not n.component.SPEC.cache:
            return None
        for execution in self.store.cache_candidates(n.name, key):
            outputs = self.store.artifacts_of(execution["id"])
            usable = (
                _type(a["type"]).still_valid(a["uri"], a["fingerprint"]) for a in outputs.values()
            )
            if outputs and all(usable):
                return execution, outputs
        return None

    # -- records -------------------------------------------------------------------------

    def start(self, n: Node, k: dict, inputs: dict[str, dict]) -> int:
        ids = {name: a["id"] for name, a in inputs.items() if a["id"] is not None}
        return self.store.start_execution(
            self.run_ctx, self.run_id, n.name, k["key"], k["params"], k["code"], ids
        )

    def succeeded(self, eid: int, n: Node, outcome: Outcome) -> None:
        """A secondary's execution is recorded without outputs (they are its chief's), so
        it is never a cache hit."""
        spec = n.component.SPEC
        outputs = {}
        for name, path in {} if outcome.worker else outcome.outputs.items():
            kind = spec.outputs[name]
            resumable = name in spec.resumable
            fp = f"working-state:{eid}" if resumable else kind.fingerprint(path)
            outputs[name] = {"type": kind.__name__, "uri": str(path), "fingerprint": fp}
        for name, art in outcome.external.items():
            outputs[name] = {
                "type": art.type.__name__,
                "uri": art.uri,
                "fingerprint": art.type.fingerprint(Path(art.uri)),
            }
        ids = self.store.finish_execution(
            eid, "succeeded", outcome.seconds, outcome.metrics, outputs
        )
        for name, art in outputs.items():
            self.artifacts[f"{n.name}.{name}"] = {**art, "id": ids[name]}

    def failed(self, eid: int, seconds: float, error: str) -> None:
        self.store.finish_execution(eid, "failed", seconds, {}, error=error)

    def reuse(self, eid: int, n: Node, rdir: Path, hit: tuple[dict, dict[str, dict]], start):
        """Record a cache hit and make this run's stage folder point at the outputs."""
        execution, outputs = hit
        metrics = json.loads(execution["summary"]) if execution["summary"] else {}
        seconds = round(time.perf_counter() - start, 2)
        self.store.finish_execution(
            eid,
            "cached",
            seconds,
            metrics,
            {k: {"id": a["id"]} for k, a in outputs.items()},
            cached_from=execution["id"],
        )
        sdir = rdir / n.name
        sdir.mkdir(parents=True, exist_ok=True)
        own = outputs.get(n.name)  # an output that is the stage folder (the report): copied in
        if own is not None and Path(own["uri"]).resolve() != sdir.resolve():
            skip = shutil.ignore_patterns("stage.json", SUCCESS)
            shutil.copytree(own["uri"], sdir, ignore=skip, dirs_exist_ok=True)
        uris = {k: a["uri"] for k, a in outputs.items() if k in n.component.SPEC.outputs}
        write_json(
            sdir / "stage.json",
            {
                "seconds": seconds,
                "summary": metrics,
                "outputs": uris,
                "cached": True,
                "cached_from": execution["run_id"],
            },
        )
        (sdir / SUCCESS).touch()
        for name, art in outputs.items():
            self.artifacts[f"{n.name}.{name}"] = art
        return Outcome(seconds, metrics, cached=True)

    def run_record(self, **fields: Any) -> None:
        self.store.update_context(self.run_ctx, **fields, updated=now())

    def invalidated(self, stages: dict[str, str]) -> None:
        """Record that these stages' outputs no longer count, and why (`dae runs show`)."""
        self.store.edit_context(
            self.run_ctx, lambda props: props.setdefault("invalidated", {}).update(stages)
        )

    def valid(self, stage: str) -> None:
        """The stage succeeded again: its outputs count."""
        self.store.edit_context(
            self.run_ctx, lambda props: (props.get("invalidated") or {}).pop(stage, None)
        )
