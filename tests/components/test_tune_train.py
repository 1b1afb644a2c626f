"""Tune and train on tiny transformed examples: real Keras Tuner, real fits."""

from functools import partial

import numpy as np
import pytest

from dae.artifacts import read_json, read_split
from dae.components import train, transform, tune
from dae.pipeline.config import Config


@pytest.fixture
def transformed(tiny_examples, make_ctx):
    ctx = make_ctx({"examples": tiny_examples}, transform.SPEC.outputs)
    transform.run(ctx)
    return ctx.outputs


@pytest.fixture
def small(config):
    config.model.family = "dense"
    config.tune.max_trials = 2
    config.tune.max_epochs = 1
    config.train.epochs = 3
    return config


@pytest.mark.slow
def test_tune_writes_best_hyperparameters_and_resumes(transformed, make_ctx, small):
    ctx = make_ctx(dict(transformed), tune.SPEC.outputs, small)
    first = tune.run(ctx).metrics
    assert first["tune_trials"] == 2
    best = read_json(ctx.outputs["best_hyperparameters"] / "best_hyperparameters.json")
    assert best["family"] == "dense" and "units_0" in best["values"]
    (project,) = [p for p in ctx.outputs["tuner_results"].iterdir() if p.is_dir()]
    before = {p.name: read_json(p / "trial.json")["score"] for p in project.glob("trial_*")}
    # overwrite=False: asking for one more trial runs exactly one, the two finished are kept.
    small.tune.max_trials = 3
    again = tune.run(make_ctx(dict(transformed), tune.SPEC.outputs, small)).metrics
    after = {p.name: read_json(p / "trial.json")["score"] for p in project.glob("trial_*")}
    assert again["tune_trials"] == 3 and len(after) == 3
    assert {k: after[k] for k in before} == before


@pytest.mark.slow
def test_a_different_search_does_not_resume_an_old_one(transformed, make_ctx, small):
    ctx = make_ctx(dict(transformed), tune.SPEC.outputs, small)
    tune.run(ctx)
    small.model.family = "conv"
    summary = tune.run(make_ctx(dict(transformed), tune.SPEC.outputs, small)).metrics
    best = read_json(ctx.outputs["best_hyperparameters"] / "best_hyperparameters.json")
    assert (
        summary["tune_trials"] == 2 and best["family"] == "conv" and "filters_1" in best["values"]
    )
    assert len([p for p in ctx.outputs["tuner_results"].iterdir() if p.is_dir()]) == 2


@pytest.mark.slow
def test_hyperband_is_the_default_oracle(transformed, make_ctx, small):
    assert Config().tune.tuner == "hyperband"
    small.tune.tuner = Config().tune.tuner
    small.tune.max_epochs = 2
    ctx = make_ctx(dict(transformed), tune.SPEC.outputs, small)
    assert tune.run(ctx).metrics["tune_trials"] >= 2
    oracle = read_json(next(ctx.outputs["tuner_results"].glob("*/oracle.json")))
    assert "hyperband_iterations" in oracle


@pytest.mark.slow
def test_train_fits_and_keeps_the_best_weights(transformed, make_ctx, small):
    ctx = make_ctx(dict(transformed), tune.SPEC.outputs, small)
    tune.run(ctx)
    inputs = {**transformed, "best_hyperparameters": ctx.outputs["best_hyperparameters"]}
    tctx = make_ctx(inputs, train.SPEC.outputs, small)
    summary = train.run(tctx).metrics
    history = read_json(tctx.outputs["model_run"] / "history.json")
    assert len(history["loss"]) == summary["train_epochs"] == 3
    assert history["loss"][-1] < history["loss"][0]
    # Annealed over the budget: cosine from the tuned rate down.
    lr = read_json(ctx.outputs["best_hyperparameters"] / "best_hyperparameters.json")["values"]
    expected = [train.cosine(e, lr=lr["learning_rate"], epochs=3) for e in range(3)]
    assert history["learning_rate"] == pytest.approx(expected, rel=1e-5)
    assert train.cosine(5, lr=1.0, epochs=10) == pytest.approx(0.5)
    assert summary["train_best_val_loss"] == pytest.approx(min(history["val_loss"]))
    assert (tctx.outputs["model"] / "model.keras").is_file()
    assert (tctx.outputs["model"] / "best.weights.h5").is_file()
    assert any((tctx.outputs["model_run"] / "logs").rglob("events.out.tfevents.*"))

    import keras

    model = keras.models.load_model(tctx.outputs["model"] / "model.keras", compile=False)
    model.compile(loss="binary_crossentropy")
    valid = read_split(transformed["transformed_examples"], "eval", ("noisy", "clean"))
    # The saved model carries the best epoch's weights, not the last epoch's.
    loss = model.evaluate(valid["noisy"], valid["clean"], verbose=0)
    assert loss == pytest.approx(min(history["val_loss"]), rel=1e-3)


def _tune_then_train(transformed, make_ctx, cfg):
    ctx = make_ctx(dict(transformed), tune.SPEC.outputs, cfg)
    summary = tune.run(ctx).metrics
    inputs = {**transformed, "best_hyperparameters": ctx.outputs["best_hyperparameters"]}
    tctx = make_ctx(inputs, train.SPEC.outputs, cfg)
    train.run(tctx)
    best = read_json(ctx.outputs["best_hyperparameters"] / "best_hyperparameters.json")
    return summary, best, tctx.outputs


@pytest.mark.slow
def test_one_search_spans_families_and_train_rebuilds_the_winner(transformed, make_ctx, small):
    import keras

    from dae.components import vae

    small.tune.families = ["dense", "vae"]
    small.tune.max_trials = 3
    small.model.beta = None  # searched too
    summary, best, out = _tune_then_train(transformed, make_ctx, small)
    assert summary["tune_trials"] == 3 and best["families"] == ["dense", "vae"]
    assert best["family"] == best["values"]["family"] in ("dense", "vae")
    assert all(k == "family" or k.startswith(best["family"] + "/") for k in best["values"])
    model = keras.models.load_model(out["model"] / "model.keras", compile=False)
    assert (vae.parts(model) is not None) == (best["family"] == "vae")
    info = read_json(out["model"] / "model.json")
    assert info["family"] == best["family"] and info["hyperparameters"] == best["values"]


@pytest.mark.slow
def test_a_vae_trains_and_keeps_its_loss_terms(transformed, make_ctx, small):
    import keras

    from dae.components import vae

    small.model.family = "conv_vae"
    small.tune.max_trials = 1
    _, best, out = _tune_then_train(transformed, make_ctx, small)
    history = read_json(out["model_run"] / "history.json")
    assert {"kl", "reconstruction", "val_kl", "val_mse"} <= set(history)
    assert history["loss"][-1] < history["loss"][0]
    model = keras.models.load_model(out["model"] / "model.keras", compile=False)
    assert vae.latent_dim(model) == best["values"]["latent_dim"]
    assert read_json(out["model"] / "model.json")["vae"] is True


@pytest.mark.slow
def test_a_baseline_is_not_searched(transformed, make_ctx, small):
    small.model.baseline = "seed_conv"
    summary, best, out = _tune_then_train(transformed, make_ctx, small)
    assert summary == {"tune_trials": 0, "tune_best_score": None}
    assert not any(out["model"].parent.glob("tuner_results/*"))
    assert best["family"] == "seed_conv"
    info = read_json(out["model"] / "model.json")
    assert info["family"] == "seed_conv" and info["hyperparameters"] == {"learning_rate": 1e-3}


def test_an_interrupted_fit_resumes_from_its_last_epoch(tmp_path):
    import keras

    from dae.components.models import build_model, hyperparameters

    x = np.random.default_rng(0).random((64, 28, 28, 1)).astype(np.float32)

    class Kill(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise KeyboardInterrupt("killed")

    def model():
        keras.utils.set_random_seed(0)
        return build_model(hyperparameters(), "dense", (28, 28, 1), 0.5, 0.3)

    drawn = []  # the epoch each batch's fresh noise was drawn for

    def noise(clean, rng):
        drawn.append(rng.bit_generator.seed_seq.entropy[1])  # rng of (seed, epoch, index)
        return clean

    args = dict(
        train=(x, x),
        valid=(x, x),
        epochs=4,
        batch_size=32,
        patience=4,
        noise=noise,
        checkpoint=tmp_path / "best.weights.h5",
        backup=tmp_path / "backup",
    )
    with pytest.raises(KeyboardInterrupt):
        train.fit(model(), callbacks=[Kill()], **args)
    assert any((tmp_path / "backup").iterdir())
    drawn.clear()
    history = train.fit(model(), **args)
    assert len(history["loss"]) == 2  # epochs 3 and 4 only
    # Two batches an epoch, with their own noise (not epoch 1's and 2's again); Keras peeks
    # at a batch or two first, to learn their structure, and trains on none of those.
    assert drawn[-4:] == [2, 2, 3, 3]


def test_fresh_noise_draws_new_noise_each_epoch_and_covers_every_image():
    from dae.imaging import corrupt

    clean = np.random.default_rng(0).random((10, 4, 4, 1)).astype(np.float32)

    def gaussian(x, rng):
        return corrupt(x, "gaussian", 0.5, rng)

    def epoch(data):
        batches = [data[i] for i in range(len(data))]
        data.on_epoch_end()
        return np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])

    data = train.fresh_noise(clean, gaussian, batch_size=4, seed=7)
    assert len(data) == 3
    (noisy_0, clean_0), (noisy_1, clean_1) = epoch(data), epoch(data)
    for targets in (clean_0, clean_1):  # every image once per epoch, in a new order
        assert sorted(map(bytes, targets)) == sorted(map(bytes, clean))
    order = [np.flatnonzero((clean == t).all(axis=(1, 2, 3)))[0] for t in clean_1]
    assert not np.array_equal(noisy_1, noisy_0[order])  # the noise is new too
    assert np.allclose(noisy_0 * 255, np.round(noisy_0 * 255), atol=1e-4)  # 8-bit, like transform
    again = train.fresh_noise(clean, gaussian, batch_size=4, seed=7)
    np.testing.assert_array_equal(epoch(again)[0], noisy_0)  # a function of the seed alone


def _epochs_of_fresh_noise(level, epochs=2, n=40, kind="gaussian"):
    """Each image's noise in each epoch, [epochs, n], measured from noisy - clean (the
    gaussian stddev or the fraction hit); image i is a grey of its own, (100 + i) / 255.
    One batch an epoch: the levels that differ are those of images in the same batch."""
    from dae.components import noise

    greys = ((100 + np.arange(n)) / 255).reshape(n, 1, 1, 1)
    clean = np.broadcast_to(greys, (n, 32, 32, 1)).astype(np.float32)
    corrupt = partial(noise.corrupt_batch, kind=kind, level=level)
    data = train.fresh_noise(clean, corrupt, batch_size=n, seed=7)
    out = np.zeros((epochs, n))
    for e in range(epochs):
        for i in range(len(data)):
            noisy, target = data[i]
            rows = np.round(target[:, 0, 0, 0] * 255).astype(int) - 100
            diff = noisy - target
            hit = diff.std(axis=(1, 2, 3)) if kind == "gaussian" else (diff != 0).mean((1, 2, 3))
            out[e, rows] = hit
        data.on_epoch_end()
    return out


def test_fresh_noise_of_a_single_level_is_what_it_always_was():
    """Pinned to the bytes fresh noise gave before levels could be drawn (bd1682a)."""
    import hashlib

    from dae.components import noise

    image = (np.arange(28 * 28).reshape(28, 28, 1) * 7 % 256).astype(np.float32) / 255.0
    clean = np.stack([image, image[::-1], image[:, ::-1]] * 3)
    digest = hashlib.sha256()
    for kind, level in (("gaussian", 0.5), ("salt_pepper", 0.2), ("mask", 0.3)):
        corrupt = partial(noise.corrupt_batch, kind=kind, level=level)
        data = train.fresh_noise(clean, corrupt, batch_size=4, seed=42)
        for _ in range(2):
            for i in range(len(data)):
                digest.update(data[i][0].tobytes())
            data.on_epoch_end()
    assert digest.hexdigest() == (
        "65b93277e78cf1f32d823b714166e3bcc9014ea1c5ad73256c97d66a834717b2"
    )


@pytest.mark.parametrize("kind", ["gaussian", "mask"])
def test_fresh_noise_draws_each_images_level_anew_each_epoch(kind):
    first, second = _epochs_of_fresh_noise({"min": 0.02, "max": 0.2}, kind=kind)
    for amounts in (first, second):  # every image its own level, over the whole range
        assert amounts.min() < 0.04 and amounts.max() > 0.17 and amounts.max() < 0.23
    # An image's level in one epoch says nothing of the next one's.
    assert np.mean(np.abs(first - second) > 0.02) > 0.6
    np.testing.assert_array_equal(
        _epochs_of_fresh_noise({"min": 0.02, "max": 0.2}, kind=kind), [first, second]
    )  # a function of the seed alone


def test_fresh_noise_of_a_list_draws_only_its_levels():
    amounts = _epochs_of_fresh_noise([0.03, 0.15]).ravel()
    near = np.minimum(np.abs(amounts - 0.03) / 0.03, np.abs(amounts - 0.15) / 0.15)
    assert near.max() < 0.1
    assert 0.3 < np.mean(amounts < 0.09) < 0.7


def test_tuner_state_files_are_replaced_whole(tmp_path, monkeypatch, small):
    """A search killed while Keras Tuner rewrites oracle.json must leave the previous file,
    not a truncated one the resumed search cannot parse."""
    import json

    import tensorflow as tf
    from keras_tuner.src import utils

    tune.make_tuner("random", lambda hp: None, tmp_path, "p", 0, small.tune)
    path = str(tmp_path / "oracle.json")
    utils.save_json(path, {"trials": list(range(1000))})
    write = tf.io.gfile.GFile.write

    def killed_midway(self, data):
        write(self, data[: len(data) // 2])
        raise KeyboardInterrupt

    monkeypatch.setattr(tf.io.gfile.GFile, "write", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        utils.save_json(path, {"trials": []})
    monkeypatch.undo()
    assert json.loads((tmp_path / "oracle.json").read_text()) == {"trials": list(range(1000))}
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []


def test_each_finished_trial_reports_its_score_and_the_best_so_far(tmp_path, small):
    """Through Keras Tuner's own hook: its tuner classes' on_trial_end, overridden."""
    import keras_tuner as kt

    small.tune.max_trials = 3
    tuner = tune.make_tuner("random", lambda hp: hp.Float("x", 0, 1), tmp_path, "p", 0, small.tune)
    reported = []

    class Progress:
        def advance(self, **fields):
            reported.append(fields)

    tune.report_trials(tuner, Progress())
    for score in (0.5, 0.2, 0.7):
        trial = tuner.oracle.create_trial("tuner0")
        tuner.oracle.update_trial(trial.trial_id, {"val_mse": score})
        trial.status = kt.engine.trial.TrialStatus.COMPLETED
        tuner.on_trial_end(trial)
    assert [(r["score"], r["best"]) for r in reported] == [(0.5, 0.5), (0.2, 0.2), (0.7, 0.2)]
    assert "on_trial_end" not in vars(tuner)  # the class's method, no rebound attribute
    assert len(tuner.oracle.trials) == 3 and tuner.oracle.get_best_trials(1)[0].score == 0.2
    hyperband = tune.make_tuner("hyperband", lambda hp: None, tmp_path, "h", 0, small.tune)
    assert isinstance(hyperband, kt.Hyperband)
    assert type(hyperband).on_trial_end is type(tuner).on_trial_end
