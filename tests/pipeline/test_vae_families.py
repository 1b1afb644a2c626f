"""The VAE families through the whole pipeline (smoke profile, real MNIST): pushed with
working `encode` / `decode` signatures, the test -ELBO in metrics.json, and the report's
latent figures."""

import json
import re
import shutil

import numpy as np
import pytest
from support import copy_root, dae

from dae.serving.format.export import (
    DECODE,
    ENCODE,
    INPUT_NAME,
    LATENT_NAME,
    OUTPUT_NAME,
    SIGNATURE,
)


@pytest.mark.parametrize("family", ["conv_vae"])  # the dense vae: tests/components (seconds)
def test_a_vae_run_pushes_encode_and_decode(smoke_root, tmp_path, family):
    import tensorflow as tf

    # A copy of the smoke run's root: ingest, validate and transform come from the cache.
    # Without its served conv model, so the blessing is the VAE's own PSNR gain.
    root = copy_root(smoke_root[0], tmp_path / "root")
    shutil.rmtree(root / "serving")
    proc = dae("run", "--profile", "smoke", "--root", str(root), "--set", f"model.family={family}")
    run_dir = root / "runs" / re.search(r"^run (\S+): succeeded$", proc.stdout, re.M)[1]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["cached_stages"] == ["ingest", "validate", "transform"]
    assert metrics["pushed_version"] == 1, metrics.get("blessing_reason")
    # -ELBO = reconstruction + KL, in nats per image, both positive.
    assert metrics["kl"] > 0 and metrics["reconstruction_nats"] > 0
    assert metrics["neg_elbo"] == pytest.approx(metrics["reconstruction_nats"] + metrics["kl"])

    sigs = tf.saved_model.load(str(root / "serving" / "denoiser" / "1")).signatures
    assert set(sigs) == {SIGNATURE, ENCODE, DECODE}
    images = tf.constant(np.random.default_rng(0).random((3, 28, 28, 1)), tf.float32)
    codes = sigs[ENCODE](**{INPUT_NAME: images})
    z_mean = codes["z_mean"].numpy()
    assert z_mean.shape[0] == 3 and codes["z_log_var"].shape == z_mean.shape
    decoded = sigs[DECODE](**{LATENT_NAME: tf.constant(z_mean)})[INPUT_NAME].numpy()
    denoised = sigs[SIGNATURE](**{INPUT_NAME: images})[OUTPUT_NAME].numpy()
    np.testing.assert_allclose(decoded, denoised, atol=1e-5)  # serving_default decodes z mean

    report = run_dir / "report"
    assert f"report: {report / 'index.html'}" in proc.stdout
    page = (report / "index.html").read_text()
    for png in ("prior_samples.png", "latent_scatter.png", "latent_manifold.png"):
        assert (report / png).is_file() and png in page
    assert "-ELBO" in page
