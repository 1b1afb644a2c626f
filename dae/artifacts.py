"""The artifact formats components hand each other (not a stage).

Components never import each other; they agree only on these formats:
- examples (ingest): TFRecord shards of tf.train.Example {id, image, label}, image raw uint8 HWC;
- transformed examples (transform): {id, noisy, clean, label}, both images raw uint8 HWC;
- every examples artifact has `schema.json`: {"shape": [h, w, c], "dtype", "splits": {..}}.
Images stay uint8 on disk: a quarter of float32's size, and exactly what a served model
receives from an 8-bit image source.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SPLITS = ("train", "eval", "test")
SCHEMA_FILE = "schema.json"


def _finite(obj: Any) -> Any:
    """NaN and infinities as null: JSON has no such numbers."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def write_json(path: Path, obj: Any) -> None:
    """Write atomically, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(_finite(obj), f, indent=2, allow_nan=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def shard_prefix(artifact: Path, split: str) -> str:
    return str(Path(artifact) / split)


def shard_files(artifact: Path, split: str) -> list[str]:
    files = sorted(str(p) for p in Path(artifact).glob(f"{split}-*.tfrecord"))
    if not files:
        raise FileNotFoundError(f"no '{split}' shards in {artifact}")
    return files


def read_schema(artifact: Path) -> dict[str, Any]:
    return read_json(Path(artifact) / SCHEMA_FILE)


def _int(value: int):
    import tensorflow as tf

    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))


def _bytes(value: bytes):
    import tensorflow as tf

    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def encode_example(example_id: int, label: int, **images: np.ndarray) -> bytes:
    """One tf.train.Example: an id, a label and named uint8 images."""
    import tensorflow as tf

    feature = {"id": _int(example_id), "label": _int(label)}
    for name, image in images.items():
        feature[name] = _bytes(np.ascontiguousarray(image).tobytes())
    example = tf.train.Example(features=tf.train.Features(feature=feature))
    # Deterministic map order: the same example is the same bytes, so the same fingerprint.
    return example.SerializeToString(deterministic=True)


def decode_example(
    record: bytes, shape: tuple[int, ...], *names: str, dtype: str = "uint8"
) -> dict[str, Any]:
    """Inverse of encode_example, in plain numpy (what a Beam DoFn wants)."""
    import tensorflow as tf

    feature = tf.train.Example.FromString(record).features.feature
    out: dict[str, Any] = {
        "id": feature["id"].int64_list.value[0],
        "label": feature["label"].int64_list.value[0],
    }
    for name in names:
        raw = feature[name].bytes_list.value[0]
        out[name] = np.frombuffer(raw, dtype=dtype).reshape(shape)
    return out


def write_shards(artifact: Path, split: str, images, labels, shards: int = 1) -> None:
    """Examples in ingest's format, `shards` files of near-equal size; ids are positions."""
    import tensorflow as tf

    per = -(-len(images) // shards)
    for s in range(shards):
        path = f"{shard_prefix(artifact, split)}-{s:05d}-of-{shards:05d}.tfrecord"
        with tf.io.TFRecordWriter(path) as w:
            for i in range(s * per, min(len(images), (s + 1) * per)):
                w.write(encode_example(i, labels[i], image=images[i]))


def read_split(
    artifact: Path, split: str, names: tuple[str, ...], limit: int | None = None, raw=False
) -> dict[str, np.ndarray]:
    """Load a split into memory as float32 (uint8 images scaled to [0, 1]), ordered by id;
    `raw` keeps the stored dtype."""
    import tensorflow as tf

    schema = read_schema(artifact)
    shape, dtype = tuple(schema["shape"]), tf.as_dtype(schema.get("dtype", "uint8"))
    scale = 255.0 if dtype == tf.uint8 else 1.0
    spec = {
        "id": tf.io.FixedLenFeature([], tf.int64),
        "label": tf.io.FixedLenFeature([], tf.int64),
        **{n: tf.io.FixedLenFeature([], tf.string) for n in names},
    }

    def parse(records):
        parsed = tf.io.parse_example(records, spec)
        for n in names:
            pixels = tf.reshape(tf.io.decode_raw(parsed[n], dtype), (-1, *shape))
            parsed[n] = pixels if raw else tf.cast(pixels, tf.float32) / scale
        return parsed

    ds = tf.data.TFRecordDataset(shard_files(artifact, split)).batch(4096).map(parse)
    parts = list(ds.as_numpy_iterator())
    out = {k: np.concatenate([p[k] for p in parts]) for k in ("id", "label", *names)}
    order = np.argsort(out["id"], kind="stable")
    if limit is not None:
        order = order[:limit]
    return {k: v[order] for k, v in out.items()}


class StageError(RuntimeError):
    """A stage stopped for a reason the user can act on; the message is one line."""


@dataclass
class StageContext:
    """What the runner hands a component: its artifact folders and the run's settings."""

    config: Any
    inputs: dict[str, Path]
    outputs: dict[str, Path]
    run_id: str
    run_dir: Path
    serving_dir: Path  # <root>/serving: the pusher writes here, the evaluator reads baselines
    log: Callable[[str], None] = print
