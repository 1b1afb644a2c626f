"""`dae denoise`: PNG folders, .npy, TFRecord and TFDS in; PNGs or .npy out; through a
SavedModel in a Beam pipeline (--model) or a real `dae serve` (--server, gRPC and REST)."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from support import dae, digit_like, free_port, write_examples

from dae import cli
from dae.artifacts import encode_example
from dae.serving.batch.destinations import to_uint8
from dae.serving.format import export

SHAPE = (28, 28, 1)


@pytest.fixture(scope="module")
def pushed(model_dir):
    """conftest's tiny model, pushed as version 1 of its base, and numpy in/out through it."""
    return SimpleNamespace(
        base=model_dir.parent, version=model_dir, denoise=export.load_servable(model_dir)
    )


@pytest.fixture(scope="module")
def endpoint(server):
    """A real `dae serve` on free ports over the same model (conftest's shared server)."""
    return server


def denoise(capsys, *args: str) -> tuple[int, str, str]:
    rc = cli.main(["denoise", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def one_line_error(err: str) -> str:
    errors = [line for line in err.splitlines() if line.startswith("dae: error:")]
    assert len(errors) == 1, err
    return errors[0]


def write_pngs(folder: Path, images: np.ndarray, names=None) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = names or [f"img{i:02d}.png" for i in range(len(images))]
    for name, image in zip(names, images, strict=True):
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(folder / name)
    return names


def read_pngs(folder: Path, names) -> np.ndarray:
    return np.stack([np.asarray(Image.open(folder / n))[..., None] for n in names])


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp" in p.name or ".old" in p.name)


# ---- round trips ------------------------------------------------------------------------


def test_png_folder_to_png_folder_keeps_names(pushed, tmp_path, capsys):
    images, _ = digit_like(7, seed=1)
    names = write_pngs(tmp_path / "in", images, [f"digit-{c}.png" for c in "abcdefg"])
    rc, out, _ = denoise(
        capsys,
        "--input",
        str(tmp_path / "in"),
        "--output",
        str(tmp_path / "out"),
        "--model",
        str(pushed.base),
        "--batch-size",
        "3",
    )
    assert rc == 0
    assert "7 images in, 7 written, 0 skipped" in out and out.count("\n") == 1
    assert sorted(os.listdir(tmp_path / "out")) == names
    expected = to_uint8(pushed.denoise(images / 255.0))
    got = read_pngs(tmp_path / "out", names)
    assert np.abs(got.astype(int) - expected).max() <= 1  # within 1/255
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("kind", ["uint8 NHW", "float NHWC"])
def test_npy_to_npy(pushed, tmp_path, capsys, kind):
    images, _ = digit_like(9, seed=2)
    if kind == "uint8 NHW":
        np.save(tmp_path / "in.npy", images[..., 0])
        extra = []
    else:
        np.save(tmp_path / "in.npy", images.astype(np.float32) / 255.0)
        # Beam options pass through: two worker threads.
        extra = [
            "--beam-option=--direct_num_workers=2",
            "--beam-option=--direct_running_mode=multi_threading",
        ]
    rc, out, _ = denoise(
        capsys,
        "--input",
        str(tmp_path / "in.npy"),
        "--output",
        str(tmp_path / "out.npy"),
        "--model",
        str(pushed.version),
        *extra,
    )
    assert rc == 0 and "9 images in, 9 written" in out
    got = np.load(tmp_path / "out.npy")
    assert got.dtype == np.float32 and got.shape == (9, *SHAPE)
    np.testing.assert_allclose(got, pushed.denoise(images / 255.0), atol=1e-6)
    assert leftovers(tmp_path) == []


def test_png_folder_to_npy_in_name_order(pushed, tmp_path, capsys):
    images, _ = digit_like(4, seed=3)
    write_pngs(tmp_path / "in", images[::-1], ["d.png", "c.png", "b.png", "a.png"])
    rc, _, _ = denoise(
        capsys,
        "--input",
        str(tmp_path / "in"),
        "--output",
        str(tmp_path / "out.npy"),
        "--model",
        str(pushed.base),
    )
    assert rc == 0
    np.testing.assert_allclose(
        np.load(tmp_path / "out.npy"), pushed.denoise(images / 255.0), atol=1e-6
    )


def test_tfrecord_inputs(pushed, endpoint, tmp_path, capsys):
    # An ingest shard ({image}) with its schema.json, through the Beam path.
    images, labels = digit_like(6, seed=4)
    artifact = write_examples(tmp_path / "examples", {"test": (images, labels)})
    (shard,) = artifact.glob("test-*.tfrecord")
    rc, out, _ = denoise(
        capsys,
        "--input",
        str(shard),
        "--output",
        str(tmp_path / "a.npy"),
        "--model",
        str(pushed.base),
    )
    assert rc == 0 and "6 images in, 6 written" in out
    np.testing.assert_allclose(
        np.load(tmp_path / "a.npy"), pushed.denoise(images / 255.0), atol=1e-6
    )

    # A transformed shard ({noisy, clean}) without a schema.json: `noisy` is read; --shape.
    import tensorflow as tf

    noisy = 255 - images
    (tmp_path / "bare").mkdir()
    bare = tmp_path / "bare" / "test-00000-of-00001.tfrecord"
    with tf.io.TFRecordWriter(str(bare)) as w:
        for i in range(len(images)):
            w.write(encode_example(i, 0, noisy=noisy[i], clean=images[i]))
    args = ["--input", str(bare), "--output", str(tmp_path / "b.npy"), "--server", endpoint.grpc]
    rc, _, err = denoise(capsys, *args)
    assert rc == 1 and "pass --shape H,W,C" in one_line_error(err)
    rc, _, _ = denoise(capsys, *args, "--shape", "28,28,1")
    assert rc == 0
    np.testing.assert_allclose(
        np.load(tmp_path / "b.npy"), pushed.denoise(noisy / 255.0), atol=1e-5
    )


def test_model_and_server_paths_agree(pushed, endpoint, tmp_path, capsys):
    images, _ = digit_like(10, seed=5)
    np.save(tmp_path / "in.npy", images)
    write_pngs(tmp_path / "pngs", images)
    outputs = {}
    for label, where in [
        ("model", ["--model", str(pushed.base)]),
        ("grpc", ["--server", endpoint.grpc]),
        ("rest", ["--server", f"127.0.0.1:{endpoint.rest_port}", "--rest"]),
    ]:
        for src, dst in [("in.npy", f"{label}.npy"), ("pngs", f"{label}-pngs")]:
            rc, out, err = denoise(
                capsys,
                "--input",
                str(tmp_path / src),
                "--output",
                str(tmp_path / dst),
                "--batch-size",
                "4",
                *where,
            )
            assert rc == 0, err
            assert "10 images in, 10 written, 0 skipped" in out
        outputs[label] = np.load(tmp_path / f"{label}.npy")
        outputs[f"{label}-pngs"] = read_pngs(
            tmp_path / f"{label}-pngs", sorted(os.listdir(tmp_path / f"{label}-pngs"))
        )
    for label in ("grpc", "rest"):
        np.testing.assert_allclose(outputs[label], outputs["model"], atol=1e-5)
        diff = np.abs(outputs[f"{label}-pngs"].astype(int) - outputs["model-pngs"])
        assert diff.max() <= 1
    np.testing.assert_allclose(outputs["model"], pushed.denoise(images / 255.0), atol=1e-6)


# ---- bad images -------------------------------------------------------------------------


def bad_folder(tmp_path: Path) -> Path:
    images, _ = digit_like(3, seed=6)
    folder = tmp_path / "in"
    write_pngs(folder, images, ["a.png", "b.png", "d.png"])
    (folder / "c.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)  # a header, no image
    good = (folder / "a.png").read_bytes()
    (folder / "e.png").write_bytes(good[: len(good) // 2])  # truncated
    (folder / "notes.txt").write_text("not an image: ignored")
    return folder


@pytest.mark.parametrize("mode", ["model", "server"])
def test_corrupt_png_skip_and_stop(pushed, endpoint, tmp_path, capsys, mode):
    folder = bad_folder(tmp_path)
    where = ["--model", str(pushed.base)] if mode == "model" else ["--server", endpoint.grpc]
    base = ["--input", str(folder), "--batch-size", "1", *where]

    rc, out, err = denoise(capsys, *base, "--output", str(tmp_path / "skip"))
    assert rc == 0
    assert "5 images in, 3 written, 2 skipped" in out
    assert f"skipped {folder / 'c.png'}:" in err and f"skipped {folder / 'e.png'}:" in err
    assert "skipped 2 of 5 images" in err
    assert sorted(os.listdir(tmp_path / "skip")) == ["a.png", "b.png", "d.png"]

    rc, out, err = denoise(capsys, *base, "--output", str(tmp_path / "stop"), "--on-error", "stop")
    assert rc == 1 and out == ""
    assert str(folder / "c.png") in one_line_error(err)
    assert not (tmp_path / "stop").exists() and leftovers(tmp_path) == []


def test_wrongly_shaped_images_are_skipped(endpoint, tmp_path, capsys):
    images, _ = digit_like(2, seed=7)
    folder = tmp_path / "in"
    write_pngs(folder, images, ["a.png", "b.png"])
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(folder / "big.png")
    Image.fromarray(np.zeros((28, 28, 3), np.uint8)).save(folder / "rgb.png")
    rc, out, err = denoise(
        capsys,
        "--input",
        str(folder),
        "--output",
        str(tmp_path / "o.npy"),
        "--server",
        endpoint.grpc,
    )
    assert rc == 0 and "4 images in, 2 written, 2 skipped" in out
    assert "big.png: shape 32x32x1 does not match the model's input 28x28x1" in err
    assert "rgb.png: shape 28x28x3 does not match the model's input 28x28x1" in err
    assert np.load(tmp_path / "o.npy").shape == (2, *SHAPE)


def test_bad_values_stop_the_job_and_leave_no_output(endpoint, tmp_path, capsys):
    images = np.random.default_rng(0).random((6, *SHAPE), dtype=np.float32)
    images[4, 0, 0, 0] = np.nan
    np.save(tmp_path / "in.npy", images)
    rc, _, err = denoise(
        capsys,
        "--input",
        str(tmp_path / "in.npy"),
        "--output",
        str(tmp_path / "out.npy"),
        "--server",
        endpoint.grpc,
        "--batch-size",
        "2",
        "--on-error",
        "stop",
    )
    assert rc == 1 and "in.npy[4]: has NaN or infinite values" in one_line_error(err)
    assert sorted(os.listdir(tmp_path)) == ["in.npy"]


def test_a_failed_write_leaves_no_output(endpoint, tmp_path, capsys, monkeypatch):
    images, _ = digit_like(5, seed=8)
    np.save(tmp_path / "in.npy", images)
    real_save, calls = Image.Image.save, []

    def disk_full(self, *args, **kwargs):
        calls.append(1)
        if len(calls) > 2:
            raise OSError(28, "No space left on device")
        return real_save(self, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", disk_full)
    rc, _, err = denoise(
        capsys,
        "--input",
        str(tmp_path / "in.npy"),
        "--output",
        str(tmp_path / "out"),
        "--server",
        endpoint.grpc,
        "--batch-size",
        "1",
    )
    assert rc == 1 and "No space left on device" in one_line_error(err)
    assert sorted(os.listdir(tmp_path)) == ["in.npy"]


def test_overwrite(endpoint, tmp_path, capsys):
    images, _ = digit_like(2, seed=9)
    np.save(tmp_path / "in.npy", images)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.png").write_bytes(b"old")
    args = [
        "--input",
        str(tmp_path / "in.npy"),
        "--output",
        str(tmp_path / "out"),
        "--server",
        endpoint.grpc,
    ]
    rc, _, err = denoise(capsys, *args)
    assert rc == 1 and "not empty (pass --overwrite" in one_line_error(err)
    rc, _, _ = denoise(capsys, *args, "--overwrite")
    assert rc == 0 and sorted(os.listdir(tmp_path / "out")) == ["00000.png", "00001.png"]
    assert leftovers(tmp_path) == []


# ---- bad input: one line, exit 1, nothing written ---------------------------------------


def _case(tmp: Path, pushed, name: str) -> tuple[list[str], str]:
    npy, model = str(tmp / "in.npy"), ["--model", str(pushed.base)]
    np.save(tmp / "in.npy", digit_like(2)[0])
    out = ["--output", str(tmp / "out.npy")]
    if name == "missing input":
        return ["--input", str(tmp / "nope"), *out, *model], "does not exist"
    if name == "unknown input suffix":
        (tmp / "in.jpg").write_bytes(b"x")
        return ["--input", str(tmp / "in.jpg"), *out, *model], "unknown input suffix '.jpg'"
    if name == "unknown output suffix":
        return ["--input", npy, "--output", str(tmp / "o.png"), *model], "unknown output suffix"
    if name == "empty folder":
        (tmp / "empty").mkdir()
        return ["--input", str(tmp / "empty"), *out, *model], "no images in PNG folder"
    if name == "empty npy":
        np.save(tmp / "none.npy", np.zeros((0, 28, 28), np.uint8))
        return ["--input", str(tmp / "none.npy"), *out, *model], "no images in .npy file"
    if name == "no SavedModel":
        (tmp / "m" / "3").mkdir(parents=True)
        return ["--input", npy, *out, "--model", str(tmp / "m")], "no SavedModel in"
    if name == "broken SavedModel":
        (tmp / "m").mkdir()
        (tmp / "m" / "saved_model.pb").write_bytes(b"not a protobuf")
        return ["--input", npy, *out, "--model", str(tmp / "m")], "cannot load the SavedModel"
    if name == "unknown runner":
        return ["--input", npy, *out, *model, "--runner", "NoSuchRunner"], "'NoSuchRunner'"
    if name == "neither --model nor --server":
        return ["--input", npy, *out], "give one of --model DIR"
    if name == "both --model and --server":
        return ["--input", npy, *out, *model, "--server", "x:1"], "give one of --model DIR"
    if name == "shape mismatch":
        np.save(tmp / "big.npy", np.zeros((3, 32, 32), np.uint8))
        return (
            ["--input", str(tmp / "big.npy"), *out, *model],
            "shape 32x32x1 does not match the model's input 28x28x1",
        )
    if name == "unreachable gRPC server":
        return ["--input", npy, *out, "--server", f"127.0.0.1:{free_port()}"], "cannot reach"
    if name == "unreachable REST server":
        return (
            ["--input", npy, *out, "--server", f"127.0.0.1:{free_port()}", "--rest"],
            "cannot reach",
        )
    if name == "existing npy":
        (tmp / "out.npy").write_bytes(b"keep")
        return ["--input", npy, *out, *model], "exists (pass --overwrite"
    if name == "output replaces the input":  # --overwrite would have swapped tmp away
        return ["--input", npy, "--output", str(tmp), *model, "--overwrite"], "would replace"
    if name == "overwrite a folder of other files":
        (tmp / "notes").mkdir()
        (tmp / "notes" / "README").write_text("mine")
        return (
            ["--input", npy, "--output", str(tmp / "notes"), *model, "--overwrite"],
            "holds README, not only PNGs",
        )
    if name == "malformed server address":
        return (
            ["--input", npy, *out, "--server", "localhost:85o1", "--rest"],
            "--server must be HOST:PORT, got 'localhost:85o1'",
        )
    if name == "unknown Beam option":
        return ["--input", npy, *out, *model, "--beam-option=--no_such_flag=1"], "no_such_flag"
    if name == "tfds not prepared":
        return (
            ["--input", "tfds:mnist/test", *out, *model, "--data-dir", str(tmp / "tfds")],
            "is not prepared in",
        )
    raise AssertionError(name)


@pytest.mark.parametrize(
    "name",
    [
        "missing input",
        "unknown input suffix",
        "unknown output suffix",
        "empty folder",
        "empty npy",
        "no SavedModel",
        "broken SavedModel",
        "unknown runner",
        "neither --model nor --server",
        "both --model and --server",
        "shape mismatch",
        "unreachable gRPC server",
        "unreachable REST server",
        "existing npy",
        "unknown Beam option",
        "tfds not prepared",
        "output replaces the input",
        "overwrite a folder of other files",
        "malformed server address",
    ],
)
def test_bad_input_is_one_line(pushed, tmp_path, capsys, name):
    args, message = _case(tmp_path, pushed, name)
    before = sorted(os.listdir(tmp_path))
    rc, out, err = denoise(capsys, *args)
    assert rc == 1 and out == ""
    assert message in one_line_error(err)
    assert sorted(os.listdir(tmp_path)) == before
    if name == "existing npy":
        assert (tmp_path / "out.npy").read_bytes() == b"keep"
    if name == "overwrite a folder of other files":
        assert (tmp_path / "notes" / "README").read_text() == "mine"


def test_console_script(tmp_path):
    help_text = dae("denoise", "--help").stdout
    assert "--on-error {skip,stop}" in help_text and "A failed job writes nothing" in help_text
    proc = dae(
        "denoise",
        "--input",
        str(tmp_path / "nope.npy"),
        "--output",
        str(tmp_path / "o.npy"),
        "--model",
        str(tmp_path),
        check=False,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        f"dae: error: input {tmp_path / 'nope.npy'} does not exist"
    )


@pytest.mark.skipif(
    not (Path("~/tensorflow_datasets/mnist").expanduser()).is_dir(), reason="no local MNIST"
)
def test_tfds_input(pushed, endpoint, tmp_path, capsys):
    rc, out, err = denoise(
        capsys,
        "--input",
        "tfds:mnist/test[:5]",
        "--output",
        str(tmp_path / "o.npy"),
        "--server",
        endpoint.grpc,
    )
    assert rc == 0, err
    assert "5 images in, 5 written" in out
    assert np.load(tmp_path / "o.npy").shape == (5, *SHAPE)
