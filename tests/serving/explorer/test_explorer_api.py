"""The explorer's numpy helpers and its JSON API against a real `dae serve` (the page's
browser test is test_explorer_browser.py)."""

from __future__ import annotations

import argparse
import io
import socket

import httpx
import numpy as np
import pytest
from explorer_support import running_explorer
from PIL import Image
from support import digit_like, free_port

from dae.serving import explorer
from dae.serving.explorer import imaging


def test_corruptions_grow_the_same_noise_with_the_level():
    clean = digit_like(1)[0][0].astype(np.float32) / 255
    for kind in ("gaussian", "salt_pepper", "mask"):
        low, high = (imaging.corrupt(clean, kind, level, seed=3) for level in (0.1, 0.5))
        assert imaging.psnr(low, clean) > imaging.psnr(high, clean), kind
        assert np.array_equal(low, imaging.corrupt(clean, kind, 0.1, seed=3))
        assert np.array_equal(np.round(high * 255), high * 255) and high.dtype == np.float32
        same = imaging.corrupt(clean, kind, 0.0, seed=3)
        assert np.array_equal(same, np.round(clean * 255) / 255)
    masked = imaging.corrupt(clean, "mask", 0.5, seed=1)
    assert set(np.unique(masked[clean != masked])) == {0.0}
    with pytest.raises(imaging.ImageError, match="unknown corruption 'blur'"):
        imaging.corrupt(clean, "blur", 0.1, seed=0)
    with pytest.raises(imaging.ImageError, match=r"level must be in \[0, 1\]"):
        imaging.corrupt(clean, "gaussian", 2.0, seed=0)


def test_psnr_and_ssim_are_the_reports_numbers():
    import tensorflow as tf

    rng = np.random.default_rng(0)
    clean = digit_like(3)[0].astype(np.float32) / 255
    noisy = np.clip(clean + rng.normal(0, 0.2, clean.shape), 0, 1).astype(np.float32)
    for a, b in zip(noisy, clean, strict=True):
        assert imaging.ssim(a, b) == pytest.approx(float(tf.image.ssim(a, b, 1.0)), abs=1e-4)
        assert imaging.psnr(a, b) == pytest.approx(float(tf.image.psnr(a, b, 1.0)), abs=1e-3)
    assert imaging.psnr(clean[0], clean[0]) == imaging.PSNR_CAP
    assert imaging.ssim(clean[0], clean[0]) == pytest.approx(1.0)


def test_pca_plane():
    rng = np.random.default_rng(0)
    codes = rng.normal(size=(300, 6)) * [5, 2, 0.1, 0.1, 0.1, 0.1] + 3
    points, mean, axes, ratios = imaging.pca2(codes)
    assert points.shape == (300, 2) and axes.shape == (2, 6)
    assert abs(axes[0, 0]) > 0.99 and abs(axes[1, 1]) > 0.99 and ratios[0] > ratios[1] > 0.1
    assert np.allclose(mean + points @ axes, codes, atol=0.5)
    two = rng.normal(size=(10, 2))
    assert np.allclose(imaging.pca2(two)[0], two)  # a 2-D latent is its own plane


def _png(array: np.ndarray, mode: str | None = None) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array, mode).save(out, "PNG")
    return out.getvalue()


def test_uploads_become_model_input():
    stroke = np.full((60, 40), 255, np.uint8)
    stroke[10:50, 18:22] = 0  # dark ink on white paper: inverted to the datasets' look
    image = imaging.decode_upload(_png(stroke), (28, 28, 1))
    assert image.shape == (28, 28, 1) and image.dtype == np.uint8
    assert image[14, 14, 0] > 200 and image[14, 3, 0] < 20 and image[1, 14, 0] < 20
    rgba = np.zeros((28, 28, 4), np.uint8)
    rgba[5:20, 5:20] = [255, 255, 255, 255]  # white strokes on transparency
    image = imaging.decode_upload(_png(rgba), (28, 28, 3))
    assert image.shape == (28, 28, 3) and image[10, 10].min() > 200 and image[25, 25].max() < 20
    with pytest.raises(imaging.ImageError, match="not an image"):
        imaging.decode_upload(b"%PDF-1.4 not a picture", (28, 28, 1))
    with pytest.raises(imaging.ImageError, match="empty"):
        imaging.decode_upload(b"", (28, 28, 1))


def _args(*argv: str):
    parser = argparse.ArgumentParser()
    explorer.add_arguments(parser)
    return parser.parse_args(argv)


def test_bad_flags_are_one_line_errors(tmp_path):
    with pytest.raises(explorer.ExploreError, match="is not an examples artifact"):
        explorer.build(_args("--server", "x:1", "--examples", str(tmp_path)))
    with pytest.raises(explorer.ExploreError, match="not tfds:NAME/SPLIT"):
        explorer.build(_args("--server", "x:1", "--examples", "tfds:mnist"))
    with pytest.raises(explorer.ExploreError, match="unknown TFDS dataset 'nope'"):
        explorer.build(_args("--server", "x:1", "--examples", "tfds:nope/test"))
    with pytest.raises(explorer.ExploreError, match="--num-examples"):
        explorer.build(_args("--server", "x:1", "--num-examples", "0"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(explorer.ExploreError, match=f"cannot bind 127.0.0.1:{port}"):
            explorer.bind("127.0.0.1", port)


@pytest.fixture(scope="module")
def api(tiny_server, digit_examples):
    rest = tiny_server.rest.removeprefix("http://")
    with (
        running_explorer("--server", rest, "--examples", str(digit_examples)) as url,
        httpx.Client(base_url=url, timeout=60) as client,
    ):
        yield client


def test_info_lists_versions_and_their_signatures(api):
    info = api.get("/api/info").json()
    assert [v["version"] for v in info["versions"]] == [2, 1]
    for v in info["versions"]:
        assert v["state"] == "AVAILABLE" and v["latent"] == 8 and v["shape"] == [28, 28, 1]
        assert v["signatures"] == ["decode", "encode", "serving_default"]
    assert info["examples"]["count"] == 40 and "(test)" in info["examples"]["note"]


def test_denoise_two_versions_with_metrics(api):
    example = api.get("/api/example", params={"index": 5}).json()
    assert example["label"] == int(digit_like(40, seed=7)[1][5])
    body = {
        "image": example["image"],
        "kind": "gaussian",
        "level": 0.4,
        "seed": 2,
        "versions": [1, 2],
    }
    out = api.post("/api/denoise", json=body).json()
    clean = np.asarray(example["image"]["data"], np.float32).reshape(28, 28, 1) / 255
    noisy = np.asarray(out["noisy"]["data"], np.float32).reshape(28, 28, 1) / 255
    assert np.array_equal(noisy, imaging.corrupt(clean, "gaussian", 0.4, 2))
    assert out["psnr"] == pytest.approx(imaging.psnr(noisy, clean))
    assert [r["version"] for r in out["results"]] == [1, 2]
    for r in out["results"]:
        denoised = np.asarray(r["denoised"]["data"], np.float32).reshape(28, 28, 1) / 255
        assert r["psnr"] == pytest.approx(imaging.psnr(denoised, clean), abs=0.05)
        assert r["ssim"] == pytest.approx(imaging.ssim(denoised, clean), abs=0.01)
    bare = api.post("/api/denoise", json=body | {"kind": "none", "versions": [1]}).json()
    assert "psnr" not in bare and "psnr" not in bare["results"][0]


def test_a_plain_denoiser_has_no_latent_space(server, digit_examples):
    """tests/serving's shared server: a dense denoiser, serving_default only."""
    rest = server.rest.removeprefix("http://")
    with running_explorer("--server", rest, "--examples", str(digit_examples)) as url:
        info = httpx.get(f"{url}/api/info", timeout=30).json()
        plane = httpx.get(f"{url}/api/latent", params={"version": 1}, timeout=30)
        example = httpx.get(f"{url}/api/example", timeout=30).json()
        body = {"image": example["image"], "kind": "mask", "level": 0.2, "versions": [1]}
        denoised = httpx.post(f"{url}/api/denoise", json=body, timeout=30)
    assert info["versions"][0]["latent"] is None
    assert info["versions"][0]["signatures"] == ["serving_default"]
    assert plane.status_code == 400 and plane.json()["error"] == (
        "version 1 of 'denoiser' has no 'encode' and 'decode' signatures: "
        "the latent explorer needs a VAE"
    )
    assert denoised.status_code == 200 and denoised.json()["results"][0]["psnr"] > 0


def test_latent_plane_manifold_and_morph(api):
    plane = api.get("/api/latent", params={"version": 2}).json()
    assert len(plane["points"]) == 40 and len(plane["codes"][0]) == 8 and plane["pca"]
    assert plane["note"] is None and len(plane["axes"]) == 2
    sheet = api.get("/api/manifold", params={"version": 2, "n": 4}).json()
    assert sheet["image"]["shape"] == [112, 112, 1]
    decoded = api.post("/api/decode", json={"version": 2, "z": plane["codes"][:3]}).json()
    assert len(decoded["images"]) == 3
    morph = api.post("/api/morph", json={"version": 2, "a": 0, "b": 1, "steps": 5}).json()
    assert len(morph["images"]) == 5 and morph["a"]["shape"] == [28, 28, 1]


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "code", "message"),
    [
        (
            "post",
            "/api/decode",
            {"json": {"version": 2, "z": [[0, 0]]}},
            400,
            "'z' must be 1 to 400 rows of 8 numbers",
        ),
        (
            "post",
            "/api/upload",
            {"params": {"version": 1}, "content": b"hello"},
            400,
            "the upload is not an image",
        ),
        ("post", "/api/denoise", {"content": b"{"}, 400, "the request body is not JSON"),
        (
            "post",
            "/api/denoise",
            {"json": {"image": {}, "versions": [9]}},
            404,
            "the model server answered 404",
        ),
        ("get", "/api/example", {"params": {"index": 40}}, 400, "go from 0 to 39"),
        ("get", "/api/latent", {"params": {"version": "x"}}, 400, "must be an integer"),
    ],
)
def test_bad_requests_get_one_line(api, method, path, kwargs, code, message):
    response = getattr(api, method)(path, **kwargs)
    assert response.status_code == code
    assert message in response.json()["error"] and "\n" not in response.json()["error"]


def test_a_server_that_is_down_is_a_message(digit_examples):
    down = f"127.0.0.1:{free_port()}"
    with running_explorer("--server", down, "--examples", "none") as url:
        response = httpx.get(f"{url}/api/info", timeout=30)
        page = httpx.get(url, timeout=30)
    assert response.status_code == 502
    assert response.json()["error"].startswith(f"the model server at {down} is not reachable")
    assert page.status_code == 200 and '<script src="/static/common.js">' in page.text


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--server", "bad server"], "--server must be the model server's REST HOST:PORT"),
        (["--server", "localhost"], "--server must be the model server's REST HOST:PORT"),
        (["--server", "h:99999"], "--server must be the model server's REST HOST:PORT"),
        (["--server", "127.0.0.1:1", "--examples", "/no/such"], "is not an examples artifact"),
    ],
)
def test_dae_explore_refuses_bad_input_in_one_line(argv, message):
    from support import dae

    proc = dae("explore", *argv, "--port", "0", check=False, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith("dae: error: ") and message in proc.stderr
    assert "\n" not in proc.stderr.strip()
