"""Image sources for `dae denoise` (not a stage); their destinations are in
`batch.destinations`.

Sources yield `Item`s in input order: a name (the file name, or the position as `00000.png`),
and either the raw image (uint8, uint16 or float, HWC) or the one-line reason it cannot be
used. `prepare` turns a raw image into the model's float32 [0, 1] input or says why not.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TFRECORD_SUFFIXES = (".tfrecord", ".tfrecords")
# A PNG declaring more pixels is skipped before decoding: a few KB of zeros can declare
# 12000x12000 (Pillow only warns below twice its own 89 Mpx limit).
MAX_PIXELS = 1 << 24


class SourceError(Exception):
    """The source as a whole is unusable; one line for the user."""


@dataclass
class Item:
    index: int  # position in the input; outputs keep this order
    name: str  # the output PNG's file name
    label: str  # what reports call it: the file, or the source and position
    image: np.ndarray | None = None
    error: str | None = None


def _dims(shape) -> str:
    return "x".join("?" if d is None else str(d) for d in shape)


def parse_shape(text: str) -> tuple[int, int, int]:
    try:
        dims = tuple(int(d) for d in text.split(","))
    except ValueError:
        dims = ()
    if len(dims) != 3 or min(dims) < 1:
        raise SourceError(f"--shape must be H,W,C with positive integers, got '{text}'")
    return dims


def shape_mismatch(have, want) -> str | None:
    """Why an HWC shape does not fit the model's (None: any size), or None if it does."""
    have, want = tuple(have), tuple(want)
    if len(have) != len(want) or any(
        w is not None and h != w for h, w in zip(have, want, strict=True)
    ):
        return f"shape {_dims(have)} does not match the model's input {_dims(want)}"
    return None


def prepare(image: np.ndarray, want) -> tuple[np.ndarray | None, str | None]:
    """A raw image -> (float32 HWC in [0, 1], None), or (None, reason)."""
    if image.ndim == 2:
        image = image[..., None]
    bad = shape_mismatch(image.shape, want)
    if bad:
        return None, bad
    if image.dtype == np.uint8:
        return image.astype(np.float32) / np.float32(255.0), None
    if image.dtype == np.uint16:
        return image.astype(np.float32) / np.float32(65535.0), None
    if image.dtype.kind != "f":
        return None, f"unsupported pixel type {image.dtype}"
    x = np.asarray(image, np.float32)
    if not np.isfinite(x).all():
        return None, "has NaN or infinite values"
    lo, hi = float(x.min()), float(x.max())
    if lo < -1e-6 or hi > 1 + 1e-6:
        return None, f"float values must be in [0, 1], found [{lo:g}, {hi:g}]"
    return np.clip(x, 0.0, 1.0), None


# ---- sources ---------------------------------------------------------------------------


class Source:
    description: str
    count: int | None = None  # None: not known before reading
    shape: tuple | None = None  # HWC when one shape holds for every image

    def items(self) -> Iterator[Item]:
        raise NotImplementedError


def read_png(path: Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """A PNG's pixels as uint8 (8-bit) or uint16 (16-bit gray), HWC. Palette images become
    RGB(A), or gray when the palette is. Raises ValueError, for an image declaring more
    than `max_pixels` before decoding it."""
    import errno

    try:
        file = open(path, "rb")  # noqa: SIM115 (closed by the `with file` below)
    except OSError as e:
        reason = "is a symlink loop" if e.errno == errno.ELOOP else f"cannot be read: {e.strerror}"
        raise ValueError(reason) from None
    with file:
        return _decode_png(file, max_pixels)


def _decode_png(file, max_pixels: int) -> np.ndarray:
    import warnings

    from PIL import Image, UnidentifiedImageError

    try:
        # Pillow warns about a large image on opening it; the limit below refuses it instead.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(file)  # reads the header only
        with im:
            if im.format != "PNG":
                raise ValueError(f"not a PNG file ({im.format or 'unknown'} format)")
            width, height = im.size
            if width * height > max_pixels:
                raise ValueError(
                    f"declares {width}x{height} pixels, over the {max_pixels} pixel limit "
                    "(not decoded)"
                )
            im.load()
            if im.mode == "P" and "transparency" in im.info:
                im = im.convert("RGBA")
            elif im.mode == "P":
                rgb = np.asarray(im.convert("RGB"), np.uint8)
                gray = (rgb[..., :1] == rgb).all()
                return rgb[..., :1] if gray else rgb
            elif im.mode == "1":
                im = im.convert("L")
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                return np.asarray(im).astype(np.uint16)[..., None]
            if im.mode not in ("L", "LA", "RGB", "RGBA"):
                raise ValueError(f"unsupported PNG mode {im.mode}")
            return np.asarray(im, np.uint8)
    except UnidentifiedImageError:
        raise ValueError("not a readable image") from None
    except (OSError, SyntaxError, Image.DecompressionBombError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"cannot decode PNG ({reason})") from None


class PngFolder(Source):
    """Every entry named *.png is an input: one that is not a readable file (a symlink loop,
    a broken link, a folder) is reported and skipped like an undecodable one."""

    def __init__(self, folder: Path):
        self.folder = folder
        try:
            found = [p for p in folder.iterdir() if p.suffix.lower() == ".png"]
        except OSError as e:
            raise SourceError(f"cannot list {folder}: {e.strerror}") from None
        self.files = sorted(found)
        self.description, self.count = f"PNG folder {folder}", len(self.files)

    def items(self):
        for i, path in enumerate(self.files):
            try:
                yield Item(i, path.name, str(path), image=read_png(path))
            except ValueError as e:
                yield Item(i, path.name, str(path), error=str(e))


class NpySource(Source):
    def __init__(self, path: Path):
        try:
            self.array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            raise SourceError(f"cannot read {path} as .npy: {str(e).splitlines()[0]}") from None
        a = self.array
        if a.ndim not in (3, 4):
            raise SourceError(f"{path} has shape {a.shape}: expected [N,H,W] or [N,H,W,C]")
        if a.dtype != np.uint8 and a.dtype.kind != "f":
            raise SourceError(f"{path} holds {a.dtype}: expected uint8 (0..255) or float in [0, 1]")
        self.path, self.description, self.count = path, f".npy file {path}", len(a)
        self.shape = (*a.shape[1:], 1) if a.ndim == 3 else tuple(a.shape[1:])

    def items(self):
        for i in range(len(self.array)):
            image = np.asarray(self.array[i]).reshape(self.shape)
            yield Item(i, f"{i:05d}.png", f"{self.path}[{i}]", image=image)


class TFRecordSource(Source):
    """dae's examples: transformed shards ({noisy, clean, ...}: `noisy` is read) or ingest
    shards ({image, ...}); the shape and dtype come from schema.json beside the file."""

    def __init__(self, path: Path, shape=None):
        from dae.artifacts import SCHEMA_FILE, read_json

        self.path, dtype = path, "uint8"
        schema_file = path.parent / SCHEMA_FILE
        if schema_file.is_file():
            try:
                schema = read_json(schema_file)
                dtype, schema_shape = schema.get("dtype", "uint8"), tuple(schema["shape"])
            except (ValueError, KeyError, TypeError) as e:
                raise SourceError(f"cannot read {schema_file}: {e}") from None
            shape = shape or schema_shape
        if shape is None:
            raise SourceError(f"no {SCHEMA_FILE} beside {path}: pass --shape H,W,C")
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        self.description = f"TFRecord file {path}"

    def _decode(self, record: bytes) -> np.ndarray:
        import tensorflow as tf
        from google.protobuf.message import DecodeError

        try:
            feature = tf.train.Example.FromString(record).features.feature
        except DecodeError:
            raise ValueError("not a tf.train.Example") from None
        name = "noisy" if "noisy" in feature else "image"
        if name not in feature or not feature[name].bytes_list.value:
            raise ValueError("has neither a 'noisy' nor an 'image' feature")
        raw = feature[name].bytes_list.value[0]
        expected = int(np.prod(self.shape)) * self.dtype.itemsize
        if len(raw) != expected:
            raise ValueError(
                f"'{name}' has {len(raw)} bytes, not the {expected} of a "
                f"{_dims(self.shape)} {self.dtype} image"
            )
        return np.frombuffer(raw, self.dtype).reshape(self.shape)

    def items(self):
        import tensorflow as tf

        records = iter(tf.data.TFRecordDataset(str(self.path)).as_numpy_iterator())
        i = 0
        while True:
            try:
                record = next(records)
            except StopIteration:
                return
            except tf.errors.OpError as e:
                msg = str(e.message).splitlines()[0]
                raise SourceError(f"{self.path} is not a readable TFRecord file: {msg}") from None
            label = f"{self.path} record {i}"
            try:
                yield Item(i, f"{i:05d}.png", label, image=self._decode(record))
            except ValueError as e:
                yield Item(i, f"{i:05d}.png", label, error=str(e))
            i += 1


class TfdsSource(Source):
    """`tfds:NAME/SPLIT` from a prepared data_dir; never downloads. Reads `image`."""

    def __init__(self, spec: str, data_dir: Path):
        from dae import tfds as tfds_data

        try:
            builder, split = tfds_data.open_prepared(spec, data_dir, ("image",))
            self.dataset = tfds_data.as_dataset(builder, split, shuffle_files=False)
        except tfds_data.TfdsError as e:
            raise SourceError(str(e)) from None
        self.count = builder.info.splits[split].num_examples
        image_shape = builder.info.features["image"].shape
        self.shape = None if None in image_shape else tuple(image_shape)
        self.spec = spec
        self.description = f"TFDS {spec.removeprefix(tfds_data.SPEC_PREFIX)} in {data_dir}"

    def items(self):
        import tensorflow_datasets as tfds

        for i, example in enumerate(tfds.as_numpy(self.dataset)):
            yield Item(i, f"{i:05d}.png", f"{self.spec} #{i}", image=example["image"])


def open_source(spec: str, shape=None, data_dir: Path | None = None) -> Source:
    if spec.startswith("tfds:"):
        source = TfdsSource(spec, Path(data_dir or "~/tensorflow_datasets").expanduser())
    else:
        path = Path(spec).expanduser()
        if not path.exists():
            raise SourceError(f"input {path} does not exist")
        if path.is_dir():
            source = PngFolder(path)
        elif path.suffix.lower() == ".npy":
            source = NpySource(path)
        elif path.suffix.lower() in TFRECORD_SUFFIXES:
            source = TFRecordSource(path, shape)
        else:
            raise SourceError(
                f"unknown input suffix '{path.suffix}' for {path}: expected a folder of PNGs, "
                "a .npy file, a .tfrecord file or tfds:NAME/SPLIT"
            )
    if shape is not None and not isinstance(source, TFRecordSource):
        raise SourceError("--shape applies to TFRecord input only")
    if source.count == 0:
        raise SourceError(f"no images in {source.description}")
    return source


# ---- destinations ----------------------------------------------------------------------
