import json

import pytest

from dae.artifacts import Servable, write_json
from dae.components import models, push
from dae.serving.format import export


@pytest.fixture
def trained(tmp_path):
    model = models.build_model(models.hyperparameters(), "dense", (28, 28, 1), 0.1, 0.3)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    model.save(model_dir / "model.keras")
    write_json(model_dir / "model.json", {"family": "dense", "hyperparameters": {}})
    write_json(tmp_path / "evaluation" / "metrics.json", {"psnr_denoised": 20.0})
    return model_dir


def _ctx(make_ctx, tmp_path, model_dir, blessed, **judged):
    blessing = {"blessed": blessed, "reason": "r", **judged}
    write_json(tmp_path / "blessing" / "blessing.json", blessing)
    inputs = {
        "model": model_dir,
        "blessing": tmp_path / "blessing",
        "evaluation": tmp_path / "evaluation",
    }
    return make_ctx(inputs, push.SPEC.outputs)


def test_an_unblessed_model_is_not_pushed(make_ctx, tmp_path, trained):
    ctx = _ctx(make_ctx, tmp_path, trained, blessed=False)
    assert push.run(ctx).metrics == {"pushed_version": None}
    assert not ctx.serving_dir.exists()
    pushed = json.loads((ctx.outputs["pushed_model"] / "pushed.json").read_text())
    assert pushed == {"pushed": False, "reason": "r"}


def test_a_blessed_model_is_pushed_once_with_its_provenance(make_ctx, tmp_path, trained):
    ctx = _ctx(make_ctx, tmp_path, trained, blessed=True)
    first = push.run(ctx).metrics
    assert first["pushed_version"] == 1
    version = ctx.serving_dir / "denoiser" / "1"
    provenance = json.loads((version / "assets.extra" / Servable.PROVENANCE).read_text())
    assert provenance["run_id"] == "test-run" and provenance["metrics"]["psnr_denoised"] == 20.0
    # Pushing the same model again (say `dae stage push` twice) makes no second version.
    assert push.run(ctx).metrics["pushed_version"] == 1
    assert sorted(p.name for p in version.parent.iterdir()) == ["1"]


def test_a_stale_blessing_is_refused_and_nothing_is_pushed(make_ctx, tmp_path, trained):
    """Blessed against no served model; meanwhile another run pushed version 1. Pushing now
    would replace a model this one was never compared with."""
    from dae.component import StageError

    judged = {"model_name": "denoiser", "baseline_version": None}
    ctx = _ctx(make_ctx, tmp_path, trained, blessed=True, **judged)
    other = models.build_model(models.hyperparameters(), "dense", (28, 28, 1), 0.2, 0.3)
    base = ctx.serving_dir / "denoiser"
    export.push(other, base)
    with pytest.raises(
        StageError,
        match="stale: judged against no served model, but 'denoiser' serves version 1 now",
    ):
        push.run(ctx)
    assert sorted(p.name for p in base.iterdir()) == ["1"]
    # Judged against version 1, it goes in as version 2.
    ctx = _ctx(make_ctx, tmp_path, trained, blessed=True, **{**judged, "baseline_version": 1})
    assert push.run(ctx).metrics["pushed_version"] == 2


def test_a_blessing_for_another_serving_model_is_refused(make_ctx, tmp_path, trained):
    from dae.component import StageError

    ctx = _ctx(make_ctx, tmp_path, trained, blessed=True, model_name="other", baseline_version=None)
    with pytest.raises(StageError, match="judged against serving model 'other', not 'denoiser'"):
        push.run(ctx)
    assert not ctx.serving_dir.exists()
