"""Tune and train on tiny transformed examples: real Keras Tuner, real fits."""

import numpy as np
import pytest

from components import train, transform, tune
from components.artifacts import read_json


@pytest.fixture
def transformed(tiny_examples, make_ctx):
    ctx = make_ctx({"examples": tiny_examples}, transform.OUTPUTS)
    transform.run(ctx)
    return ctx.outputs


@pytest.fixture
def small(config):
    config.model.family = "dense"
    config.tune.max_trials = 2
    config.tune.max_epochs = 1
    config.train.epochs = 3
    return config


def test_tune_writes_best_hyperparameters_and_resumes(transformed, make_ctx, small):
    ctx = make_ctx(dict(transformed), tune.OUTPUTS, small)
    first = tune.run(ctx)
    assert first["tune_trials"] == 2
    best = read_json(ctx.outputs["best_hyperparameters"] / "best_hyperparameters.json")
    assert best["family"] == "dense" and "units_0" in best["values"]
    # overwrite=False: a second run over the same directory reuses the finished trials.
    again = tune.run(ctx)
    assert again["tune_trials"] == 2 and again["tune_best_score"] == first["tune_best_score"]


def test_hyperband_is_the_default_oracle(transformed, make_ctx, small):
    small.tune.tuner = "hyperband"
    small.tune.max_epochs = 2
    ctx = make_ctx(dict(transformed), tune.OUTPUTS, small)
    assert tune.run(ctx)["tune_trials"] >= 2
    oracle = read_json(next(ctx.outputs["tuner_results"].glob("*/oracle.json")))
    assert "hyperband_iterations" in oracle


def test_train_fits_and_keeps_the_best_weights(transformed, make_ctx, small):
    ctx = make_ctx(dict(transformed), tune.OUTPUTS, small)
    tune.run(ctx)
    inputs = {**transformed, "best_hyperparameters": ctx.outputs["best_hyperparameters"]}
    tctx = make_ctx(inputs, train.OUTPUTS, small)
    summary = train.run(tctx)
    history = read_json(tctx.outputs["model_run"] / "history.json")
    assert len(history["loss"]) == summary["train_epochs"] == 3
    assert history["loss"][-1] < history["loss"][0]
    assert summary["train_best_val_loss"] == pytest.approx(min(history["val_loss"]))
    assert (tctx.outputs["model"] / "model.keras").is_file()
    assert (tctx.outputs["model"] / "best.weights.h5").is_file()
    assert any((tctx.outputs["model_run"] / "logs").rglob("events.out.tfevents.*"))

    import keras

    model = keras.models.load_model(tctx.outputs["model"] / "model.keras", compile=False)
    x = np.zeros((1, 28, 28, 1), np.float32)
    assert model.predict(x, verbose=0).shape == x.shape
