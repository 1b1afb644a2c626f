"""Fast, offline tests of pipeline.prepare_data on small synthetic bytes (no real data)."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import re
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from dae.pipeline import prepare_data as prep

PAYLOAD = struct.pack(">2I", 0x801, 12) + bytes(range(10)) + b"\x07\x03"


def _expected_header(fname: str, mtime: int) -> bytes:
    return b"\x1f\x8b\x08\x08" + struct.pack("<I", mtime) + b"\x00\x03" + fname.encode() + b"\x00"


def test_original_gzip_header_bytes_exact():
    header = prep.original_gzip_header("train-images.idx3-ubyte", 848331386)
    assert header == _expected_header("train-images.idx3-ubyte", 848331386)
    assert header[3] == 0x08 and header[8:10] == b"\x00\x03" and header.endswith(b"\x00")


@pytest.mark.parametrize("with_name", [False, True])
def test_header_rewrite_gives_valid_gzip(with_name: bool):
    # Debian's files have a bare header; handle one with FNAME too, as gzip(1) writes by default.
    raw = io.BytesIO()
    with gzip.GzipFile("x.idx" if with_name else "", "wb", fileobj=raw, mtime=123) as gz:
        gz.write(PAYLOAD)
    data = raw.getvalue()
    assert bool(data[3] & 0x08) is with_name
    rebuilt = prep.original_gzip_header("t10k-labels-idx1-ubyte", 1504176627)
    rebuilt += prep.strip_gzip_header(data)
    assert rebuilt.startswith(_expected_header("t10k-labels-idx1-ubyte", 1504176627))
    assert gzip.decompress(rebuilt) == PAYLOAD
    with gzip.GzipFile(fileobj=io.BytesIO(rebuilt)) as f:
        assert f.read() == PAYLOAD
        assert f.mtime == 1504176627


@pytest.mark.skipif(shutil.which("gzip") is None, reason="GNU gzip not installed")
def test_gnu_gzip_then_header_rewrite_roundtrips():
    gz = prep._gzip_n6(PAYLOAD * 50)
    assert gz[:4] == b"\x1f\x8b\x08\x00" and gz[8:10] == b"\x00\x03"  # what rebuild_mnist relies on
    rebuilt = prep.original_gzip_header("train-labels.idx1-ubyte", 848331398) + gz[10:]
    assert gzip.decompress(rebuilt) == PAYLOAD * 50


def test_strip_gzip_header_rejects_non_gzip():
    with pytest.raises(prep.DataPrepError):
        prep.strip_gzip_header(b"PK\x03\x04 definitely not gzip data")


class _Evil:
    def __reduce__(self):
        return (os.system, ("true",))


def test_restricted_unpickler_rejects_os_system():
    evil = pickle.dumps(_Evil(), protocol=2)
    assert b"system" in evil
    with pytest.raises(pickle.UnpicklingError, match="forbidden"):
        prep.restricted_loads(evil)


@pytest.mark.parametrize("protocol", [3, 4])  # 2 from Python 3 needs _codecs: not admitted
def test_restricted_unpickler_accepts_numpy_arrays(protocol: int):
    obj = ((np.arange(12, dtype=np.float32).reshape(3, 4) / 256, np.array([1, 2, 3])), "x")
    (images, labels), tag = prep.restricted_loads(pickle.dumps(obj, protocol=protocol))
    np.testing.assert_array_equal(images, obj[0][0])
    assert images.dtype == np.float32 and labels.dtype == obj[0][1].dtype and tag == "x"


def test_to_uint8_is_exact_and_strict():
    pixels = np.arange(256, dtype=np.uint8).repeat(4)[:784].reshape(1, 784)
    images, labels = prep._to_uint8(pixels.astype(np.float32) / 256, np.array([7]), 1, "t")
    np.testing.assert_array_equal(images.reshape(1, 784), pixels)
    assert images.dtype == labels.dtype == np.uint8
    with pytest.raises(prep.DataPrepError, match="not uint8/256"):
        prep._to_uint8(np.full((1, 784), 0.3, np.float32), np.array([7]), 1, "t")
    with pytest.raises(prep.DataPrepError, match="shape"):
        prep._to_uint8(np.zeros((2, 784), np.float32), np.array([7]), 1, "t")


def test_checksum_mismatch_names_the_file_and_writes_nothing(tmp_path: Path):
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    for fname in prep.ORIGINALS["fashion_mnist"]:
        (src / fname).write_bytes(gzip.compress(PAYLOAD, mtime=0))
    with pytest.raises(prep.DataPrepError, match="train-images-idx3-ubyte.gz") as err:
        prep.rebuild_fashion_mnist(src, out)
    assert "sha256 mismatch" in str(err.value) and "\n" not in str(err.value)
    assert not out.exists() or not any(out.iterdir())


def test_check_sha256():
    prep.check_sha256(
        b"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", "f"
    )
    with pytest.raises(prep.DataPrepError, match="some/file.gz"):
        prep.check_sha256(b"abd", "0" * 64, "some/file.gz")


def test_missing_source_file_is_a_dataprep_error(tmp_path: Path):
    with pytest.raises(prep.DataPrepError, match="cannot read"):
        prep.rebuild_fashion_mnist(tmp_path, tmp_path / "out")


def test_find_fashion_mnist_source_reuses_unpacked_deb(tmp_path, monkeypatch):
    monkeypatch.setattr(prep, "FASHION_SYSTEM_DIR", Path("/nonexistent/fashion-mnist"))
    found = tmp_path / "dataset-fashion-mnist" / "nonexistent" / "fashion-mnist"
    found.mkdir(parents=True)
    for fname in prep.ORIGINALS["fashion_mnist"]:
        (found / fname).write_bytes(b"x")
    monkeypatch.setattr(prep, "_run", lambda *a, **k: pytest.fail("must not run apt-get"))
    assert prep.find_fashion_mnist_source(tmp_path) == found


def test_originals_table_is_complete():
    for name in prep.SUPPORTED:
        assert sorted(prep.ORIGINALS[name]) == sorted(
            f"{s}-{k}-ubyte.gz" for s in ("train", "t10k") for k in ("images-idx3", "labels-idx1")
        )
        assert all(len(sha) == 64 for _, _, sha in prep.ORIGINALS[name].values())


def test_prepare_unknown_name_raises_value_error(tmp_path: Path):
    with pytest.raises(ValueError, match="cifar10"):
        prep.prepare(["cifar10"], tmp_path, tmp_path / "m", tmp_path / "c")


def test_main_unknown_name_returns_2(tmp_path: Path, capsys):
    rc = prep.main(["--data-dir", str(tmp_path), "mnist", "not_a_dataset"])
    assert rc == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dae: error: ") and "not_a_dataset" in lines[0]
    assert captured.out == ""
    assert list(tmp_path.iterdir()) == []  # names are checked before any work


def test_main_dataprep_error_returns_2(tmp_path: Path, capsys, monkeypatch):
    def boom(*args, **kwargs):
        raise prep.DataPrepError("sha256 mismatch for mnist/t10k-labels-idx1-ubyte.gz")

    monkeypatch.setattr(prep, "prepare", boom)
    assert prep.main(["--data-dir", str(tmp_path), "mnist"]) == 2
    assert (
        capsys.readouterr().err
        == "dae: error: sha256 mismatch for mnist/t10k-labels-idx1-ubyte.gz\n"
    )


@pytest.mark.slow  # a real prepare: about a minute on 2 cores
def test_a_real_prepare_prints_one_line(tmp_path: Path):
    """What a user sees (no TF_CPP_MIN_LOG_LEVEL of their own): the summary line, and no
    TFDS progress bars, TFDS prints or TensorFlow native lines on stderr."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    dae = str(Path(sys.executable).with_name("dae"))
    cmd = [dae, "data", "prepare", "mnist", "--data-dir", str(tmp_path / "tfds")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr == ""
    lines = proc.stdout.splitlines()
    assert len(lines) == 1 and re.fullmatch(
        r"mnist 3\.0\.1 test=10000 train=60000 \(\d+\.\d s\)", lines[0]
    ), lines
