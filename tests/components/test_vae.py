"""A VAE through evaluate and report, in one process as `dae run` runs them: its parts are
run without TensorFlow's "triggered tf.function retracing" warnings."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from dae.artifacts import write_json
from dae.component import StageContext
from dae.components import evaluate, models, report, transform, vae
from dae.pipeline.config import load_config


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.fixture
def tf_warnings():
    """TensorFlow's Python log (its own logger, which pytest's caplog does not see)."""
    handler, logger = _Lines(), logging.getLogger("tensorflow")
    logger.addHandler(handler)
    yield handler.lines
    logger.removeHandler(handler)


def _stage_inputs(tmp, family: str):
    from support import digit_like, write_examples

    cfg = load_config(None, "smoke")
    images, labels = digit_like(40, seed=4)
    raw = write_examples(tmp / "raw", {"train": (images, labels), "test": (images, labels)})
    outs = {"transformed_examples": tmp / "t", "transform_graph": tmp / "g"}
    transform.run(StageContext(cfg, {"examples": raw}, outs, "r", tmp, tmp, print))
    inputs = {k: tmp / k for k in report.SPEC.inputs if k != "transformed_examples"}
    inputs["transformed_examples"] = outs["transformed_examples"]
    for k in ("model", "model_run", "evaluation", "blessing"):
        inputs[k].mkdir(parents=True)
    model = models.build_model(models.hyperparameters(), family, (28, 28, 1), 0.1, 0.3)
    models.deployable(model).save(inputs["model"] / "model.keras")
    write_json(inputs["model"] / "model.json", {"family": family, "hyperparameters": {}})
    write_json(inputs["model_run"] / "history.json", {"loss": [0.3, 0.2], "val_loss": [0.3, 0.2]})
    write_json(tmp / "baseline" / "baseline.json", {"version": None})  # nothing in service
    return cfg, inputs


@pytest.mark.parametrize("family", ["vae", "conv_vae"])
def test_evaluate_and_report_of_a_vae_do_not_retrace(tmp_path, tf_warnings, family):
    cfg, inputs = _stage_inputs(tmp_path, family)
    judged = {**inputs, "baseline": tmp_path / "baseline"}
    outs = {"evaluation": inputs["evaluation"], "blessing": inputs["blessing"]}
    for _ in range(2):  # a second model in the same process, as a tuned run evaluates
        evaluate.run(StageContext(cfg, judged, outs, "r", tmp_path, tmp_path / "s", print))
        out = tmp_path / "report"
        out.mkdir(exist_ok=True)
        report.run(StageContext(cfg, inputs, {"report": out}, "r", tmp_path, tmp_path, print))
    assert (out / "latent_manifold.png").is_file()
    assert [line for line in tf_warnings if "retracing" in line] == []


def test_parts_in_batches_match_one_call():
    model = models.deployable(
        models.build_model(models.hyperparameters(), "vae", (28, 28, 1), 0.1, 0.3)
    )
    images = np.random.default_rng(0).random((70, 28, 28, 1)).astype(np.float32)
    z_mean, z_log_var = vae.encode(model, images, batch_size=32)
    want_mean, want_log_var = (t.numpy() for t in vae.parts(model)[0](images))
    np.testing.assert_allclose(z_mean, want_mean, atol=1e-5)
    np.testing.assert_allclose(z_log_var, want_log_var, atol=1e-5)
    decoded = vae.decode(model, z_mean, batch_size=32)
    np.testing.assert_allclose(decoded, model(images).numpy(), atol=1e-5)
