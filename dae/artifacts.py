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
from pathlib import Path
from typing import Any

import numpy as np

from dae.files import atomic_write, fingerprint_dir

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
    text = json.dumps(_finite(obj), indent=2, allow_nan=False) + "\n"
    atomic_write(path, text)


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


# ---- artifact types (TFX's standard artifacts): what each kind holds -------------------


class Artifact:
    """A kind of artifact and the files its producer writes (REQUIRED: checked after the
    producer succeeds). Consumers name files through the type, never as literals."""

    REQUIRED: tuple[str, ...] = ()
    TYPES: dict[str, type[Artifact]] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        Artifact.TYPES[cls.__name__] = cls

    @classmethod
    def fingerprint(cls, path: Path) -> str:
        return fingerprint_dir(path)

    @classmethod
    def still_valid(cls, path: Path, fingerprint: str | None) -> bool:
        """May a recorded artifact still be reused (a cache hit)?"""
        return Path(path).exists()

    @classmethod
    def describe(cls, path: Path) -> dict[str, Any]:
        """What lineage shows of it."""
        return {}


class Examples(Artifact):
    """TFRecord shards per split (see the module's docstring) and their schema."""

    SCHEMA = SCHEMA_FILE
    FINGERPRINT = "fingerprint.json"  # ingest's: the source data a run saw
    REQUIRED = (SCHEMA,)

    @classmethod
    def describe(cls, path: Path) -> dict[str, Any]:
        source = Path(path) / cls.FINGERPRINT
        return {"dataset": read_json(source)} if source.is_file() else {}


class ExampleStatistics(Artifact):
    STATISTICS, ANOMALIES = "statistics.json", "anomalies.json"
    REQUIRED = (STATISTICS, ANOMALIES)


class TransformGraph(Artifact):
    """The transform's analyzers' results (pixel mean and std) the model bakes in."""

    FILE = "transform.json"
    REQUIRED = (FILE,)


class HyperParameters(Artifact):
    FILE = "best_hyperparameters.json"
    REQUIRED = (FILE,)

    @classmethod
    def describe(cls, path: Path) -> dict[str, Any]:
        return {"hyperparameters": read_json(Path(path) / cls.FILE)["values"]}


class WorkingState(Artifact):
    """Resumable state kept across executions (a tuner's trials, training backups)."""


class Model(Artifact):
    KERAS = "model.keras"  # the deployable denoiser
    INFO = "model.json"  # family, hyperparameters, parameter count
    REQUIRED = (KERAS, INFO)


class ModelRun(Artifact):
    """Training's logs: TensorBoard events and the loss curves."""

    HISTORY = "history.json"
    REQUIRED = (HISTORY,)


class ModelEvaluation(Artifact):
    METRICS = "metrics.json"
    REQUIRED = (METRICS,)


class ModelBlessing(Artifact):
    FILE = "blessing.json"
    BLESSED, NOT_BLESSED = "BLESSED", "NOT_BLESSED"  # TFX's marker files
    REQUIRED = (FILE,)


class ServedModel(Artifact):
    """A resolver's answer: which servable (if any) a model is judged against."""

    FILE = "baseline.json"  # {"version", "uri", "model_sha256"}; version null: none
    REQUIRED = (FILE,)


class PushedModel(Artifact):
    FILE = "pushed.json"
    REQUIRED = (FILE,)


class Servable(Artifact):
    """A version folder in TF Serving's layout, written by the pusher outside the run. Its
    fingerprint is the model it was exported from, so a reused push is the same model."""

    PROVENANCE = "dae_provenance.json"  # in assets.extra/: the run, model, metrics

    @classmethod
    def provenance(cls, path: Path) -> dict[str, Any]:
        source = Path(path) / "assets.extra" / cls.PROVENANCE
        try:
            return read_json(source)
        except (OSError, ValueError):
            return {}

    @classmethod
    def fingerprint(cls, path: Path) -> str:
        return cls.provenance(path).get("model_sha256", "unknown")

    @classmethod
    def still_valid(cls, path: Path, fingerprint: str | None) -> bool:
        return Path(path).is_dir() and cls.fingerprint(path) == fingerprint


class Report(Artifact):
    INDEX = "index.html"
    REQUIRED = (INDEX,)
