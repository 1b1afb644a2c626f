"""Between the runner and the metadata store: cache keys, cache hits, execution records.

A cache hit is a previous successful execution of the same stage with the same key whose
outputs still exist (for a pushed servable: still there, still the same model).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from dae.artifacts import write_json
from dae.pipeline import cache
from dae.pipeline.dag import Node
from dae.pipeline.metadata import MetadataStore, default_url, now

SUCCESS = "_SUCCESS"


def code_version() -> str:
    """The git commit of the code, when it runs from a checkout."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--", "."],
                           capture_output=True, text=True, timeout=5).stdout.strip()  # fmt: skip
    return (out.stdout.strip() + ("-dirty" if dirty else "")) if out.returncode == 0 else "unknown"


def open_store(config, root: Path) -> MetadataStore:
    return MetadataStore(config.metadata_url or default_url(root))


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

    def input_artifacts(self, n: Node, inputs: dict[str, Path], rdir: Path) -> dict[str, dict]:
        out = {}
        for name, ref in n.inputs.items():
            art = self.artifacts.get(ref) or self._recorded(rdir, ref)
            if art is None or Path(art["uri"]) != Path(inputs[name]):
                art = {"id": None, "uri": str(inputs[name]),
                       "fingerprint": cache.fingerprint_dir(inputs[name])}  # fmt: skip
            out[name] = art
        return out

    def _recorded(self, rdir: Path, ref: str) -> dict | None:
        """An upstream output of this run as the store knows it (for `dae stage`)."""
        producer, output = ref.split(".")
        for ex in reversed(self.store.executions_of_run(rdir.name)):
            if ex["component"] == producer and ex["status"] in ("succeeded", "cached"):
                return self.store.artifacts_of(ex["id"]).get(output)
        return None

    def key(self, n: Node, inputs: dict[str, dict], serving_dir: Path) -> dict[str, Any]:
        params = cache.parameters(n.name, self.config.to_dict())
        code = cache.code_fingerprint(n.component)
        extra = ""
        if n.name == "ingest":
            extra = cache.source_identity(self.config)
        if n.name == "evaluate":
            extra = cache.baseline_identity(self.config, serving_dir, Path(inputs["model"]["uri"]))
        fps = {k: a["fingerprint"] for k, a in inputs.items()}
        return {"key": cache.cache_key(n.name, fps, params, code, extra), "params": params,
                "code": code}  # fmt: skip

    def hit(self, n: Node, key: str) -> tuple[dict, dict[str, dict]] | None:
        if not self.use_cache:
            return None
        for execution in self.store.cache_candidates(n.name, key):
            outputs = self.store.artifacts_of(execution["id"])
            if outputs and all(_still_there(a) for a in outputs.values()):
                return execution, outputs
        return None

    # -- records -------------------------------------------------------------------------

    def start(self, n: Node, k: dict, inputs: dict[str, dict]) -> int:
        ids = {name: a["id"] for name, a in inputs.items() if a["id"] is not None}
        return self.store.start_execution(self.run_ctx, self.run_id, n.name, k["key"],
                                          k["params"], k["code"], ids)  # fmt: skip

    def succeeded(self, eid: int, n: Node, result: dict) -> None:
        resumable = getattr(n.component, "RESUMABLE", ())
        outputs = {}
        for name, path in result["_outputs"].items():
            fp = f"working-state:{eid}" if name in resumable else cache.fingerprint_dir(path)
            outputs[name] = {"type": name, "uri": str(path), "fingerprint": fp}
        if result.get("pushed_path"):
            uri = result["pushed_path"]
            outputs["servable"] = {"type": "servable", "uri": uri,
                                   "fingerprint": cache.served_model_sha(Path(uri))}  # fmt: skip
        summary = _summary(result)
        ids = self.store.finish_execution(eid, "succeeded", result["seconds"], summary, outputs)
        for name, art in outputs.items():
            self.artifacts[f"{n.name}.{name}"] = {**art, "id": ids[name]}

    def failed(self, eid: int, seconds: float, error: str) -> None:
        self.store.finish_execution(eid, "failed", seconds, {}, error=error)

    def reuse(self, eid: int, n: Node, rdir: Path, hit: tuple[dict, dict[str, dict]], start):
        """Record a cache hit and make this run's stage folder point at the outputs."""
        execution, outputs = hit
        summary = {**_loads(execution["summary"]), "cached": True}
        seconds = round(time.perf_counter() - start, 2)
        self.store.finish_execution(eid, "cached", seconds, summary,
                                    {k: {"id": a["id"]} for k, a in outputs.items()},
                                    cached_from=execution["id"])  # fmt: skip
        sdir = rdir / n.name
        sdir.mkdir(parents=True, exist_ok=True)
        own = outputs.get(n.name)  # an output that is the stage folder (the report): copied in
        if own is not None and Path(own["uri"]).resolve() != sdir.resolve():
            skip = shutil.ignore_patterns("stage.json", SUCCESS)
            shutil.copytree(own["uri"], sdir, ignore=skip, dirs_exist_ok=True)
        uris = {k: a["uri"] for k, a in outputs.items() if k in n.component.OUTPUTS}
        write_json(sdir / "stage.json", {"seconds": seconds, "summary": summary, "outputs": uris,
                                         "cached_from": execution["run_id"]})  # fmt: skip
        (sdir / SUCCESS).touch()
        for name, art in outputs.items():
            self.artifacts[f"{n.name}.{name}"] = art
        return {"seconds": seconds, **summary}

    def run_record(self, **fields: Any) -> None:
        self.store.update_context(self.run_ctx, **fields, updated=now())


def _still_there(art: dict) -> bool:
    path = Path(art["uri"])
    if not path.exists():
        return False
    if art["type"] == "servable":  # still the very model that was pushed
        return cache.served_model_sha(path) == art["fingerprint"]
    return True


def _summary(result: dict) -> dict:
    return {k: v for k, v in result.items() if k not in ("seconds", "_outputs")}


def _loads(text: str | None) -> dict:
    import json

    return json.loads(text) if text else {}
