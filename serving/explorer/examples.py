"""The explorer's test images: the random picks of the playground and the codes of the
latent scatter. From an examples artifact of the pipeline (ingest's `image` or transform's
`clean`, split `test`), from a prepared TFDS split, or by default MNIST's test split when
TFDS has it prepared (the default dataset); none at all is allowed, and the page says so."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dae import tfds as tfds_data

AUTO, DEFAULT_TFDS = "auto", "tfds:mnist/test"


class ExamplesError(Exception):
    """--examples names something unusable; one line for the user."""


@dataclass
class TestImages:
    images: np.ndarray  # uint8 [N, H, W, C]
    labels: np.ndarray  # int [N]
    description: str


def load(spec: str, limit: int, data_dir: Path) -> tuple[TestImages | None, str]:
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
    try:
        return tfds_data.is_prepared(name, data_dir)
    except tfds_data.TfdsError as e:
        raise ExamplesError(str(e)) from None


def _tfds(spec: str, limit: int, data_dir: Path) -> TestImages:
    import tensorflow_datasets as tfds

    try:
        builder, split = tfds_data.open_prepared(spec, data_dir, ("image", "label"))
        ds = tfds_data.as_dataset(builder, split, shuffle_files=False).take(limit).batch(limit)
    except tfds_data.TfdsError as e:
        raise ExamplesError(str(e)) from None
    try:
        batch = next(iter(tfds.as_numpy(ds)), None)
    except Exception as e:  # a damaged record file: TF's message, first line
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ExamplesError(f"cannot read TFDS {spec}: {reason}") from None
    description = f"TFDS {spec.removeprefix(tfds_data.SPEC_PREFIX)}"
    if batch is None:
        return TestImages(np.zeros((0, 1, 1, 1), np.uint8), np.zeros(0, int), description)
    return TestImages(_uint8(batch["image"]), batch["label"].astype(int), description)


def _artifact(spec: str, limit: int) -> TestImages:
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
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ExamplesError(f"cannot read {path}: {reason}") from None
    return TestImages(_uint8(split[name]), split["label"].astype(int), f"{path} (test)")


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
