"""Push (TFX's Pusher): a blessed model becomes the next servable version, atomically."""

from __future__ import annotations

import json
from typing import Any

from components.artifacts import StageContext, read_json, write_json
from serving.export import push

INPUTS = ("model", "blessing", "evaluation")
OUTPUTS = ("pushed_model",)


def run(ctx: StageContext) -> dict[str, Any]:
    import keras

    cfg = ctx.config
    blessing = read_json(ctx.inputs["blessing"] / "blessing.json")
    out = ctx.outputs["pushed_model"]
    if not blessing["blessed"]:
        write_json(out / "pushed.json", {"pushed": False, "reason": blessing["reason"]})
        ctx.log(f"push: skipped, model not blessed ({blessing['reason']})")
        return {"pushed_version": None}
    model = keras.models.load_model(ctx.inputs["model"] / "model.keras", compile=False)
    # Recorded inside the version so a served model can be traced back to its run.
    provenance = {
        "run_id": ctx.run_id,
        "metrics": read_json(ctx.inputs["evaluation"] / "metrics.json"),
        "model": read_json(ctx.inputs["model"] / "model.json"),
    }
    base = ctx.serving_dir / cfg.push.model_name
    version, path = push(
        model, base, {"dae_provenance.json": json.dumps(provenance, indent=2).encode()}
    )
    write_json(out / "pushed.json", {"pushed": True, "version": version, "path": str(path)})
    ctx.log(f"push: version {version} at {path}")
    return {"pushed_version": version, "pushed_path": str(path)}
