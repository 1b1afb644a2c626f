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
from dae.serving.format.export import latest_version


def resolve(base: Path, model_sha256: str) -> tuple[dict[str, Any], str]:
    """({"version", "uri", "model_sha256"} of the baseline under `base`, why); version None:
    none. "Nothing served" and "this very model" are the same answer, byte for byte, so
    the evaluator's cache key is the same before and after this model's push."""
    version = latest_version(base)
    if version is None:
        return {"version": None}, "nothing served"
    uri = Path(base) / str(version)
    served = Servable.fingerprint(uri)
    if served == model_sha256:
        return {"version": None}, f"version {version} is this model"
    return {"version": version, "uri": str(uri), "model_sha256": served}, f"version {version}"


def run(ctx: StageContext) -> StageResult:
    base = ctx.serving_dir / ctx.config.push.model_name
    baseline, why = resolve(base, sha256_file(ctx.inputs["model"] / Model.KERAS))
    write_json(ctx.outputs["baseline"] / ServedModel.FILE, baseline)
    ctx.log(f"resolver: baseline {'none' if baseline['version'] is None else why} ({why})")
    return StageResult()


SPEC = Spec(
    inputs={"model": Model},
    outputs={"baseline": ServedModel},
    parameters=("push.model_name",),
    cache=False,
)
