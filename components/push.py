"""Push (TFX's Pusher): a blessed model becomes the next servable version, atomically."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from dae.artifacts import StageContext, StageError, read_json, write_json
from dae.components import vae
from dae.serving.export import latest_version, push

PROVENANCE = "dae_provenance.json"

INPUTS = ("model", "blessing", "evaluation")
OUTPUTS = ("pushed_model",)
ATOMIC = True  # the runner holds SIGINT/SIGTERM while a push and its record are written


def run(ctx: StageContext) -> dict[str, Any]:
    import keras

    cfg = ctx.config
    blessing = read_json(ctx.inputs["blessing"] / "blessing.json")
    out = ctx.outputs["pushed_model"]
    if not blessing["blessed"]:
        write_json(out / "pushed.json", {"pushed": False, "reason": blessing["reason"]})
        ctx.log(f"push: skipped, model not blessed ({blessing['reason']})")
        return {"pushed_version": None}
    model_file = ctx.inputs["model"] / "model.keras"
    digest = hashlib.sha256(model_file.read_bytes()).hexdigest()
    base = ctx.serving_dir / cfg.push.model_name
    latest = latest_version(base)
    if latest is not None and _provenance(base / str(latest)).get("model_sha256") == digest:
        path = base / str(latest)
        write_json(out / "pushed.json", {"pushed": True, "version": latest, "path": str(path)})
        ctx.log(f"push: this model is already version {latest}; nothing to do")
        return {"pushed_version": latest, "pushed_path": str(path)}
    _check_current(blessing, cfg.push.model_name, latest)
    model = keras.models.load_model(model_file, compile=False)
    # Recorded inside the version so a served model can be traced back to its run.
    provenance = {
        "run_id": ctx.run_id,
        "model_sha256": digest,
        "metrics": read_json(ctx.inputs["evaluation"] / "metrics.json"),
        "model": read_json(ctx.inputs["model"] / "model.json"),
    }
    extra = {PROVENANCE: json.dumps(provenance, indent=2).encode()}
    version, path = push(model, base, extra, vae_parts=vae.parts(model))
    write_json(out / "pushed.json", {"pushed": True, "version": version, "path": str(path)})
    ctx.log(f"push: version {version} at {path}")
    return {"pushed_version": version, "pushed_path": str(path)}


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


def _provenance(version_dir) -> dict:
    path = version_dir / "assets.extra" / PROVENANCE
    return read_json(path) if path.is_file() else {}
