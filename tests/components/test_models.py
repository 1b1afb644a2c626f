import json
import zipfile

import numpy as np
import pytest

from dae.components import models, vae


@pytest.mark.parametrize("family", models.FAMILIES + models.BASELINES)
@pytest.mark.parametrize("shape", [(28, 28, 1), (30, 22, 3)])
def test_families_and_baselines_map_images_to_images(family, shape):
    hp = models.hyperparameters()
    model = models.deployable(models.build_model(hp, family, shape, mean=0.3, std=0.2))
    x = np.random.default_rng(0).random((2, *shape)).astype(np.float32)
    y = model.predict(x, verbose=0)
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    assert "learning_rate" in hp.values
    assert (vae.parts(model) is not None) == (family in models.VAES)
    if family in models.FAMILIES:  # searched; a baseline's shape is fixed
        assert any(name in hp.values for name in ("latent_dim", "filters_1"))


def test_hyperparameters_round_trip_rebuilds_the_same_architecture():
    hp = models.hyperparameters()
    hp.Fixed("filters_1", 48)
    a = models.build_model(hp, "conv", (28, 28, 1), 0.1, 0.3)
    b = models.build_model(models.hyperparameters(hp.get_config()), "conv", (28, 28, 1), 0.1, 0.3)
    assert a.count_params() == b.count_params()
    assert [layer.__class__ for layer in a.layers] == [layer.__class__ for layer in b.layers]


def test_standardization_is_inside_the_model():
    for family in ("dense", "vae"):
        model = models.build_model(models.hyperparameters(), family, (28, 28, 1), 0.25, 0.5)
        encoder = vae.parts(model)[0] if family == "vae" else model
        out = encoder.get_layer("standardize")(np.full((1, 28, 28, 1), 0.75, np.float32))
        assert float(np.asarray(out).mean()) == pytest.approx(1.0, abs=1e-5)


def test_unknown_family_is_refused():
    with pytest.raises(ValueError, match="unknown model family 'gan'"):
        models.build_model(models.hyperparameters(), "gan", (28, 28, 1), 0.1, 0.3)


def test_a_search_across_families_makes_the_family_a_hyperparameter():
    hp = models.hyperparameters()
    conv = models.build_model(hp, ["conv", "vae"], (28, 28, 1), 0.1, 0.3, beta=None)
    assert hp.values["family"] == "conv" and vae.parts(conv) is None
    assert "conv/filters_1" in hp.values and "vae/beta" not in hp.values  # only conv's are active
    fixed = models.hyperparameters(hp.get_config())
    fixed.values["family"] = "vae"
    model = models.build_model(fixed, ["conv", "vae"], (28, 28, 1), 0.1, 0.3, beta=None)
    assert isinstance(model, vae.VAE) and 0.1 <= fixed.values["vae/beta"] <= 1.0
    # Each family has its own hyperparameters, even those named alike.
    assert {"conv/learning_rate", "vae/learning_rate", "vae/latent_dim"} <= set(fixed.values)
    # A fixed beta is not searched.
    hp = models.hyperparameters()
    assert models.build_model(hp, "vae", (28, 28, 1), 0.1, 0.3, beta=0.5).beta == 0.5
    (beta,) = [s for s in hp.get_config()["space"] if s["config"]["name"] == "beta"]
    assert beta["class_name"] == "Fixed"


def test_kl_and_bernoulli_likelihood_in_nats():
    z = np.zeros((3, 4), np.float32)
    assert np.asarray(vae.kl_divergence(z, z)) == pytest.approx(np.zeros(3))
    # KL(N(1, 1) || N(0, 1)) = 1/2 per dimension.
    assert np.asarray(vae.kl_divergence(z + 1, z)) == pytest.approx(np.full(3, 2.0))
    rng = np.random.default_rng(0)
    clean = rng.random((2, 5, 5, 1)).astype(np.float32)
    logits = rng.normal(0, 3, clean.shape).astype(np.float32)
    p = 1 / (1 + np.exp(-logits.astype(np.float64)))
    expected = -(clean * np.log(p) + (1 - clean) * np.log(1 - p)).sum(axis=(1, 2, 3))
    assert np.asarray(vae.bernoulli_nll(clean, logits)) == pytest.approx(expected, rel=1e-5)


def test_a_vae_trains_denoising_and_saves_as_a_plain_keras_model(tmp_path):
    import keras

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    clean = (rng.random((128, 28, 28, 1)) < 0.2).astype(np.float32)
    noisy = np.clip(clean + rng.normal(0, 0.3, clean.shape), 0, 1).astype(np.float32)
    model = models.build_model(models.hyperparameters(), "vae", (28, 28, 1), 0.2, 0.4)
    history = model.fit(
        noisy, clean, validation_data=(noisy, clean), epochs=3, batch_size=32, verbose=0
    ).history
    assert {"loss", "reconstruction", "kl", "mse", "val_loss", "val_mse"} <= set(history)
    assert history["loss"][-1] < history["loss"][0]
    # The loss is -ELBO (beta = 1) in nats per image: reconstruction + KL.
    terms = vae.elbo(model, noisy, clean)
    assert terms["neg_elbo"] == pytest.approx(terms["reconstruction_nats"] + terms["kl"])
    assert terms["neg_elbo"] == pytest.approx(history["val_loss"][-1], rel=0.1)

    path = tmp_path / "model.keras"
    models.deployable(model).save(path)
    config = json.loads(zipfile.ZipFile(path).read("config.json"))
    assert "components" not in json.dumps(config)  # no custom object to register on load
    loaded = keras.models.load_model(path, compile=False)
    z_mean, _ = vae.encode(loaded, noisy[:4])
    np.testing.assert_allclose(
        loaded.predict(noisy[:4], verbose=0), vae.decode(loaded, z_mean), atol=1e-5
    )
    assert vae.latent_dim(loaded) == z_mean.shape[1]


def test_mixed_precision_trains_bf16_and_saves_float32(tmp_path):
    """Training arithmetic is bf16 under `mixed_bfloat16`, with a float32 sigmoid; what is
    saved (and so evaluated and served) is a float32 model with the same weights."""
    from functools import partial

    import keras

    build = partial(models.build_model, models.hyperparameters(), "conv", (28, 28, 1), 0.1, 0.3)
    with models.dtype_policy("mixed_bfloat16"):
        mixed = build()
    assert keras.config.dtype_policy().name == "float32"  # restored after the block
    x = np.random.default_rng(0).random((4, 28, 28, 1), dtype=np.float32)
    assert mixed.layers[3].compute_dtype == "bfloat16" and mixed.output.dtype == "float32"
    mixed.fit(x, x, epochs=1, verbose=0)
    plain = models.float32_copy(mixed, build)
    assert {layer.compute_dtype for layer in plain.layers} == {"float32"}
    for a, b in zip(plain.get_weights(), mixed.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(plain.predict(x, verbose=0), mixed.predict(x, verbose=0), atol=0.03)
    plain.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras", compile=False)
    assert {layer.compute_dtype for layer in loaded.layers} == {"float32"}
    assert models.float32_copy(plain, build) is plain


def test_auto_precision_follows_the_cpu(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("flags\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\n")
    assert models.precision("auto", cpuinfo) == "mixed_bfloat16"
    cpuinfo.write_text("flags\t: fpu avx2 avx512f avx512_vnni\n")
    assert models.precision("auto", cpuinfo) == "float32"
    assert models.precision("auto", tmp_path / "missing") == "float32"
    assert models.precision("mixed_bfloat16", cpuinfo) == "mixed_bfloat16"


def test_the_policy_survives_keras_tuners_clear_session(tmp_path):
    """Keras Tuner clears the session (and Keras' global dtype policy) before each trial:
    the hypermodel itself must set the policy, or a 'bf16' search runs in float32."""
    from functools import partial

    import keras_tuner as kt

    built = []

    def hypermodel(hp):
        model = models.build_model(hp, "conv", (28, 28, 1), 0.1, 0.3, policy="mixed_bfloat16")
        built.append(model.layers[3].compute_dtype)
        return model

    x = np.random.default_rng(0).random((8, 28, 28, 1), dtype=np.float32)
    tuner = kt.RandomSearch(
        partial(hypermodel),
        objective="val_loss",
        max_trials=1,
        directory=tmp_path,
        project_name="p",
    )
    with models.dtype_policy("mixed_bfloat16"):  # what does not survive
        tuner.search(x, x, validation_data=(x, x), epochs=1, verbose=0)
    assert built and set(built) == {"bfloat16"}


def test_the_gated_conv_family_passes_an_image_through_untrained():
    """The gated output's claim: before any training the model returns nearly its input
    (the gate starts open), so light noise need not be learned away; the direct one not."""
    from dae.imaging import psnr

    rng = np.random.default_rng(0)
    clean = np.clip(rng.random((4, 28, 28, 1)) * 3 - 2, 0, 1).astype(np.float32)  # 0s, 1s, grays
    out, space = {}, {}
    for output in (None, "direct"):  # None: the family's default
        hp = models.hyperparameters()
        if output is not None:
            hp.Fixed("output", output)
        model = models.build_model(hp, "conv", (28, 28, 1), 0.1, 0.3)
        out[output], space[output] = model.predict(clean, verbose=0), hp.values
    assert space[None]["output"] == "gated"
    assert psnr(out[None], clean).min() >= 40.0  # 0.98 of the input + 0.02 of 0.5
    assert psnr(out["direct"], clean).max() < 20.0
