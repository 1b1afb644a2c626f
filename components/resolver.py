"""Resolver (TFX's Resolver node, latest-served-model strategy): the servable a new model
is judged against, as an artifact the evaluator declares like any other input.

The answer is the latest version under the serving model's base path, unless that version
is this very model (a model is not its own baseline: a re-run after a push judges, and so
caches, exactly like the run that pushed). What it reads lies outside the pipeline, so it
runs every time; the evaluator's cache key follows its answer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dae.artifacts import Model, Servable, ServedModel, write_json
from dae.component import Spec, StageContext, StageResult
from dae.files import sha256_file
from dae.serving.export import latest_version


def resolve(base: Path, model_sha256: str) -> dict[str, Any]:
    """{"version", "uri", "model_sha256"} of the baseline under `base`; version None: none."""
    version = latest_version(base)
    if version is None:
        return {"version": None}
    uri = Path(base) / str(version)
    served = Servable.fingerprint(uri)
    if served == model_sha256:
        return {"version": None, "note": f"version {version} is this model"}
    return {"version": version, "uri": str(uri), "model_sha256": served}


def run(ctx: StageContext) -> StageResult:
    base = ctx.serving_dir / ctx.config.push.model_name
    baseline = resolve(base, sha256_file(ctx.inputs["model"] / Model.KERAS))
    write_json(ctx.outputs["baseline"] / ServedModel.FILE, baseline)
    found = f"version {baseline['version']}" if baseline["version"] else "none"
    note = f" ({baseline['note']})" if "note" in baseline else ""
    ctx.log(f"resolver: baseline {found}{note}")
    return StageResult()


SPEC = Spec(
    inputs={"model": Model},
    outputs={"baseline": ServedModel},
    parameters=("push.model_name",),
    cache=False,
)
