"""The explorer's test images: the random picks of the playground and the codes of the
latent scatter. From an examples artifact of the pipeline (ingest's `image` or transform's
`clean`, split `test`), from a prepared TFDS split, or by default MNIST's test split when
TFDS has it prepared (the default dataset); none at all is allowed, and the page says so."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

AUTO, DEFAULT_TFDS = "auto", "tfds:mnist/test"


class ExamplesError(Exception):
    """--examples names something unusable; one line for the user."""


@dataclass
class Examples:
    images: np.ndarray  # uint8 [N, H, W, C]
    labels: np.ndarray  # int [N]
    description: str


def load(spec: str, limit: int, data_dir: Path) -> tuple[Examples | None, str]:
    """(examples or None, a sentence saying where they come from or why there are none)."""
    data_dir = Path(data_dir).expanduser()
    if spec == "none":
        return None, "no test images (--examples none)"
    if spec == AUTO:
        if not _tfds_prepared("mnist", data_dir):
            return None, (
                f"no test images: MNIST is not prepared in {data_dir} and --examples is not "
                "set (pass an examples artifact folder or tfds:NAME/SPLIT)"
            )
        spec = DEFAULT_TFDS
    found = _tfds(spec, limit, data_dir) if spec.startswith("tfds:") else _artifact(spec, limit)
    if len(found.images) == 0:
        raise ExamplesError(f"no images in {found.description}")
    return found, f"{len(found.images)} test images from {found.description}"


def _tfds_prepared(name: str, data_dir: Path) -> bool:
    import tensorflow_datasets as tfds

    try:
        return tfds.builder(name, data_dir=str(data_dir)).is_prepared()
    except tfds.core.registered.DatasetNotFoundError:
        raise ExamplesError(f"unknown TFDS dataset '{name}'") from None
    except Exception:  # TFDS says "not there" in several ways
        return False


def _tfds(spec: str, limit: int, data_dir: Path) -> Examples:
    import tensorflow_datasets as tfds

    name, _, split = spec.removeprefix("tfds:").rpartition("/")
    if not name or not split:
        raise ExamplesError(f"'{spec}' is not tfds:NAME/SPLIT (e.g. tfds:mnist/test)")
    if not _tfds_prepared(name, data_dir):
        raise ExamplesError(
            f"TFDS dataset '{name}' is not prepared in {data_dir} (dae never downloads: "
            f"run `dae data prepare {name}`)"
        )
    builder = tfds.builder(name, data_dir=str(data_dir))
    features = builder.info.features
    if "image" not in features or "label" not in features:
        raise ExamplesError(f"TFDS dataset '{name}' has no 'image' and 'label' features")
    try:
        ds = builder.as_dataset(split=split, shuffle_files=False).take(limit).batch(limit)
        batch = next(iter(tfds.as_numpy(ds)), None)
    except Exception as e:
        raise ExamplesError(f"bad TFDS split '{split}': {str(e).splitlines()[0]}") from None
    if batch is None:
        return Examples(np.zeros((0, 1, 1, 1), np.uint8), np.zeros(0, int), f"TFDS {spec}")
    return Examples(_uint8(batch["image"]), batch["label"].astype(int), f"TFDS {name}/{split}")


def _artifact(spec: str, limit: int) -> Examples:
    from dae import artifacts

    path = Path(spec).expanduser()
    if not (path / artifacts.SCHEMA_FILE).is_file():
        raise ExamplesError(
            f"--examples {path} is not an examples artifact (no {artifacts.SCHEMA_FILE}): "
            "pass an ingest or transform output folder, or tfds:NAME/SPLIT"
        )
    try:
        files = artifacts.shard_files(path, "test")
    except FileNotFoundError as e:
        raise ExamplesError(str(e)) from None
    name = "clean" if "clean" in _feature_names(files[0]) else "image"
    try:
        split = artifacts.read_split(path, "test", (name,), limit=limit, raw=True)
    except Exception as e:  # a damaged shard: TF's message, first line
        raise ExamplesError(f"cannot read {path}: {str(e).splitlines()[0]}") from None
    return Examples(_uint8(split[name]), split["label"].astype(int), f"{path} (test)")


def _feature_names(shard: str) -> set[str]:
    import tensorflow as tf

    for record in tf.data.TFRecordDataset(shard).take(1).as_numpy_iterator():
        return set(tf.train.Example.FromString(record).features.feature)
    return set()


def _uint8(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8:  # float in [0, 1] or 16-bit: what the page draws is 8 bits
        scale = 255.0 if images.dtype.kind == "f" else 255.0 / np.iinfo(images.dtype).max
        images = np.round(np.clip(images * scale, 0, 255)).astype(np.uint8)
    return images if images.ndim == 4 else images[..., None]
