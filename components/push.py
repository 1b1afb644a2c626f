"""Push (TFX's Pusher): a blessed model becomes the next servable version, atomically."""

from __future__ import annotations

import json

from dae.artifacts import (
    Model,
    ModelBlessing,
    ModelEvaluation,
    PushedModel,
    Servable,
    read_json,
    write_json,
)
from dae.component import External, Spec, StageContext, StageError, StageResult
from dae.components import vae
from dae.files import sha256_file
from dae.serving.format.export import latest_version, push


def _pushed(out, version: int, path) -> StageResult:
    write_json(out / PushedModel.FILE, {"pushed": True, "version": version, "path": str(path)})
    return StageResult({"pushed_version": version}, {"servable": External(Servable, str(path))})


def run(ctx: StageContext) -> StageResult:
    import keras

    cfg = ctx.config
    blessing = read_json(ctx.inputs["blessing"] / ModelBlessing.FILE)
    out = ctx.outputs["pushed_model"]
    if not blessing["blessed"]:
        write_json(out / PushedModel.FILE, {"pushed": False, "reason": blessing["reason"]})
        ctx.log(f"push: skipped, model not blessed ({blessing['reason']})")
        return StageResult({"pushed_version": None})
    model_file = ctx.inputs["model"] / Model.KERAS
    digest = sha256_file(model_file)
    base = ctx.serving_dir / cfg.push.model_name
    latest = latest_version(base)
    if latest is not None and Servable.fingerprint(base / str(latest)) == digest:
        ctx.log(f"push: this model is already version {latest}; nothing to do")
        return _pushed(out, latest, base / str(latest))
    _check_current(blessing, cfg.push.model_name, latest)
    model = keras.models.load_model(model_file, compile=False)
    # Recorded inside the version so a served model can be traced back to its run.
    provenance = {
        "run_id": ctx.run_id,
        "model_sha256": digest,
        "metrics": read_json(ctx.inputs["evaluation"] / ModelEvaluation.METRICS),
        "model": read_json(ctx.inputs["model"] / Model.INFO),
    }
    extra = {Servable.PROVENANCE: json.dumps(provenance, indent=2).encode()}
    version, path = push(model, base, extra, vae_parts=vae.parts(model))
    ctx.log(f"push: version {version} at {path}")
    return _pushed(out, version, path)


def _check_current(blessing: dict, model_name: str, latest: int | None) -> None:
    """A blessing holds against the model that was in service when it was judged: once
    another version is served (another run pushed meanwhile), it must be judged again."""
    if blessing.get("model_name", model_name) != model_name:
        raise StageError(
            f"the blessing was judged against serving model '{blessing['model_name']}', "
            f"not '{model_name}'; evaluate again with the same push.model_name"
        )
    if "baseline_version" in blessing and blessing["baseline_version"] != latest:
        judged, now = (
            "no served model" if v is None else f"version {v}"
            for v in (blessing["baseline_version"], latest)
        )
        raise StageError(
            f"the blessing is stale: judged against {judged}, but '{model_name}' serves "
            f"{now} now; evaluate again before pushing"
        )


SPEC = Spec(
    inputs={"model": Model, "blessing": ModelBlessing, "evaluation": ModelEvaluation},
    outputs={"pushed_model": PushedModel},
    parameters=("push",),
    atomic=True,  # the runner holds SIGINT/SIGTERM while a push and its record are written
)
