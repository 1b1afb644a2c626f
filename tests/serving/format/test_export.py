import os

import numpy as np
import pytest

from dae.components import models
from dae.serving.format import export


@pytest.fixture(scope="module")
def model():
    return models.build_model(models.hyperparameters(), "dense", (28, 28, 1), 0.13, 0.31)


def test_versions_ignore_everything_but_integers(tmp_path):
    for name in ["3", "10", ".tmp-abc", "notes", "2x"]:
        (tmp_path / name).mkdir()
    (tmp_path / "7").write_text("a file, not a version")
    assert export.versions(tmp_path) == [3, 10]
    assert export.latest_version(tmp_path) == 10
    assert export.latest_version(tmp_path / "missing") is None


def test_push_exports_servable_versions_in_order(model, tmp_path):
    v1, p1 = export.push(model, tmp_path / "m", {"note.json": b"{}"})
    v2, _ = export.push(model, tmp_path / "m")
    assert (v1, v2) == (1, 2)
    assert (p1 / "saved_model.pb").is_file() and (p1 / "assets.extra" / "note.json").is_file()
    assert sorted(os.listdir(tmp_path / "m")) == ["1", "2"]  # no temporary folder left

    denoise = export.load_servable(p1)
    x = np.random.default_rng(0).random((5, 28, 28, 1)).astype(np.float32)
    np.testing.assert_allclose(denoise(x), model.predict(x, verbose=0), atol=1e-5)
    # The graph clips its input to [0, 1].
    np.testing.assert_allclose(denoise(x + 5.0), denoise(np.ones_like(x)), atol=1e-6)
    assert denoise.input_shape == (None, 28, 28, 1)


def test_failed_export_leaves_no_version(model, tmp_path, monkeypatch):
    export.push(model, tmp_path / "m")

    def broken(model, path, vae_parts=None):
        (path / "variables").mkdir(parents=True)
        raise RuntimeError("disk full")

    monkeypatch.setattr(export, "export_servable", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        export.push(model, tmp_path / "m")
    assert os.listdir(tmp_path / "m") == ["1"]


def test_push_races_take_the_next_number(model, tmp_path, monkeypatch):
    base = tmp_path / "m"
    export.push(model, base)
    real = export._next_version
    calls = []

    def stale(b):  # the first look misses a version another pusher just renamed in
        calls.append(1)
        if len(calls) == 1:
            (base / "2").mkdir()
            (base / "2" / "saved_model.pb").write_bytes(b"x")
            return 2
        return real(b)

    monkeypatch.setattr(export, "_next_version", stale)
    version, _ = export.push(model, base)
    assert version == 3 and len(calls) == 2


def test_a_stray_file_named_like_a_version_is_stepped_over(model, tmp_path):
    base = tmp_path / "m"
    base.mkdir()
    (base / "1").write_text("not a servable")
    old_tmp = base / ".tmp-killed"
    old_tmp.mkdir()
    os.utime(old_tmp, (0, 0))  # left by a pusher killed long ago
    version, _ = export.push(model, base)
    assert version == 2 and export.versions(base) == [2] and not old_tmp.exists()


def test_a_vae_also_exports_encode_and_decode(tmp_path):
    import json

    import keras
    import tensorflow as tf

    from dae.components import vae

    trainer = models.build_model(models.hyperparameters(), "conv_vae", (28, 28, 1), 0.13, 0.31)
    models.deployable(trainer).save(tmp_path / "model.keras")
    model = keras.models.load_model(tmp_path / "model.keras", compile=False)  # as push does
    _, path = export.push(model, tmp_path / "m", vae_parts=vae.parts(model))
    loaded = tf.saved_model.load(str(path))
    sigs = loaded.signatures
    assert set(sigs) == {export.SIGNATURE, export.ENCODE, export.DECODE}

    x = np.random.default_rng(0).random((5, 28, 28, 1)).astype(np.float32)
    codes = sigs[export.ENCODE](images=tf.constant(x))
    z_dim = vae.latent_dim(model)
    assert {k: tuple(v.shape) for k, v in codes.items()} == {
        "z_mean": (5, z_dim),
        "z_log_var": (5, z_dim),
    }
    # serving_default is deterministic: the decoded z mean.
    denoised = sigs[export.SIGNATURE](images=tf.constant(x))[export.OUTPUT_NAME].numpy()
    decoded = sigs[export.DECODE](z=codes["z_mean"])[export.INPUT_NAME].numpy()
    np.testing.assert_allclose(denoised, decoded, atol=1e-5)
    np.testing.assert_allclose(denoised, model.predict(x, verbose=0), atol=1e-5)
    # Generating: any z from the prior decodes to images in [0, 1].
    prior = tf.random.stateless_normal((7, z_dim), seed=(1, 2)) * 3
    samples = sigs[export.DECODE](z=prior)[export.INPUT_NAME].numpy()
    assert samples.shape == (7, 28, 28, 1) and samples.min() >= 0 and samples.max() <= 1
    servable = json.loads((path / "assets.extra" / export.SERVABLE_FILE).read_text())
    assert servable["signature_input_ranges"][export.DECODE] is None
    assert servable["input_range"] == [0.0, 1.0]
    assert export.load_servable(path).input_shape == (None, 28, 28, 1)
    # The server validates each signature against its own range: z is unbounded.
    from dae.serving.model_server.predict import validate_inputs
    from dae.serving.model_server.servable import SavedModelBundle, ServingError

    served = SavedModelBundle("m", 1, path)
    ranges = served.input_ranges
    z = np.full((2, z_dim), 3.0, np.float32)
    validate_inputs(served.signatures[export.DECODE], {export.LATENT_NAME: z}, ranges["decode"])
    with pytest.raises(ServingError, match="range"):
        validate_inputs(served.signatures[export.ENCODE], {"images": x + 2}, ranges["encode"])


def test_an_autoencoder_has_only_the_serving_signature(model, tmp_path):
    import tensorflow as tf

    _, path = export.push(model, tmp_path / "m")
    assert set(tf.saved_model.load(str(path)).signatures) == {export.SIGNATURE}
