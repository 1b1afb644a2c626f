"""Ingest (TFX's ExampleGen): a TFDS image dataset into train/eval/test example shards.

Reads through TFDS's own builders from a local data_dir and never downloads: a dataset that
is not prepared is built from its manual_dir (see `dae data prepare`) or refused.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from dae import tfds as tfds_data
from dae.artifacts import Examples, write_json, write_shards
from dae.component import Spec, StageContext, StageError, StageResult
from dae.files import sha256_file

# The source split that train and eval are carved from, and the one that becomes test.
SOURCE_SPLITS = {"train": "train", "test": "test"}


# ---- pure core -------------------------------------------------------------------------


def split_indices(
    n: int, validation_fraction: float, seed: int, cap: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """A seeded permutation of the source train split, cut into (train, eval) indices."""
    order = np.random.default_rng(seed).permutation(n)
    if cap is not None:
        order = order[:cap]
    n_eval = max(1, round(len(order) * validation_fraction))
    if n_eval >= len(order):
        raise StageError(f"too few examples ({len(order)}) to hold out a validation split")
    return order[n_eval:], order[:n_eval]


def fingerprint(name: str, version: str, splits: dict[str, int], files: list[Path]) -> dict:
    """What identifies the data a run saw: dataset, version, split sizes, file checksums."""
    checksums = {p.name: sha256_file(p) for p in sorted(files)}
    digest = hashlib.sha256(
        repr((name, version, sorted(splits.items()), sorted(checksums.items()))).encode()
    ).hexdigest()
    return {
        "dataset": name,
        "version": version,
        "splits": splits,
        "files": checksums,
        "sha256": digest,
    }


# ---- TFDS ------------------------------------------------------------------------------


def _expand(path: str) -> Path:
    return Path(path).expanduser()


def _builder(cfg):
    name = cfg.data.dataset
    try:
        builder = tfds_data.builder(name, _expand(cfg.data.data_dir))
    except tfds_data.TfdsError as e:
        raise StageError(str(e)) from None
    features = builder.info.features
    image = features[cfg.data.image_key] if cfg.data.image_key in features else None  # noqa: SIM401 (not a dict)
    if image is None:
        raise StageError(f"dataset '{name}' has no image feature '{cfg.data.image_key}'")
    if getattr(image, "shape", None) is None or None in image.shape:
        raise StageError(f"dataset '{name}' has images of varying size {image.shape}")
    if cfg.data.label_key and cfg.data.label_key not in features:
        raise StageError(
            f"dataset '{name}' has no label feature '{cfg.data.label_key}' "
            "(set data.label_key=null for unlabelled data)"
        )
    return builder


def _check_splits(builder) -> None:
    try:
        for split in SOURCE_SPLITS.values():
            tfds_data.require_split(builder, split)
    except tfds_data.TfdsError as e:
        raise StageError(str(e)) from None


def _manual_dir(cfg) -> Path | None:
    """The dataset's manual_dir when it holds files TFDS can prepare from, else None."""
    manual = _expand(cfg.data.manual_dir) / cfg.data.dataset
    return manual if manual.is_dir() and any(manual.iterdir()) else None


def _require_local_data(builder, cfg) -> Path | None:
    """Prepared already (None), or preparable from its manual_dir (that dir), or refused."""
    if tfds_data.prepared(builder):
        _check_splits(builder)
        return None
    manual = _manual_dir(cfg)
    if manual is None:
        manual_dir = _expand(cfg.data.manual_dir)
        error = tfds_data.not_prepared(builder, _expand(cfg.data.data_dir), manual_dir)
        raise StageError(f"{error} (its manual_dir {manual_dir / cfg.data.dataset} is empty)")
    return manual


def _ensure_prepared(builder, cfg) -> None:
    import tensorflow_datasets as tfds

    manual = _require_local_data(builder, cfg)
    if manual is None:
        return
    download_dir = _expand(cfg.data.data_dir) / "downloads" / cfg.data.dataset
    builder.download_and_prepare(
        download_dir=str(download_dir),
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual)),
    )
    _check_splits(builder)


def preflight(cfg) -> None:
    """Fail before a run directory exists: unknown dataset or no local data."""
    _require_local_data(_builder(cfg), cfg)


def _load(builder, split: str, cfg) -> tuple[np.ndarray, np.ndarray]:
    import tensorflow_datasets as tfds

    data = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
    images = np.asarray(data[cfg.data.image_key])
    if images.ndim == 3:
        images = images[..., None]
    labels = data[cfg.data.label_key] if cfg.data.label_key else np.full(len(images), -1)
    labels = np.asarray(labels).astype(np.int64)
    return images, labels


def source_identity(cfg) -> str:
    """What ingest reads from outside the pipeline: the prepared TFDS files (names, sizes,
    times; cheap), so re-preparing a dataset is a cache miss."""
    name = cfg.data.dataset.split(":")[0].split("/")[0]
    folder = _expand(cfg.data.data_dir) / name
    if not folder.is_dir():
        return "absent"
    listing = sorted(
        (str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
        if p.is_file()
    )
    return hashlib.sha256(repr(listing).encode()).hexdigest()


def run(ctx: StageContext) -> StageResult:
    cfg = ctx.config
    out = ctx.outputs["examples"]
    builder = _builder(cfg)
    _ensure_prepared(builder, cfg)
    images, labels = _load(builder, SOURCE_SPLITS["train"], cfg)
    train_idx, eval_idx = split_indices(
        len(images), cfg.data.validation_fraction, cfg.seed, cfg.data.max_train_examples
    )
    test_images, test_labels = _load(builder, SOURCE_SPLITS["test"], cfg)
    test_images = test_images[: cfg.data.max_test_examples]
    test_labels = test_labels[: cfg.data.max_test_examples]
    splits = {
        "train": (images[train_idx], labels[train_idx]),
        "eval": (images[eval_idx], labels[eval_idx]),
        "test": (test_images, test_labels),
    }
    out.mkdir(parents=True, exist_ok=True)
    for split, (x, y) in splits.items():
        write_shards(out, split, x, y, shards=max(1, min(cfg.beam.num_shards, len(x) // 1000)))
    sizes = {split: len(x) for split, (x, _) in splits.items()}
    info = fingerprint(
        builder.info.name,
        str(builder.info.version),
        sizes,
        [p for p in Path(builder.data_dir).iterdir() if p.is_file()],
    )
    schema = {"shape": list(images.shape[1:]), "dtype": str(images.dtype), "splits": sizes}
    write_json(out / Examples.SCHEMA, schema)
    write_json(out / Examples.FINGERPRINT, info)
    ctx.log(f"ingest: {info['dataset']} {info['version']} {sizes} shape={images.shape[1:]}")
    return StageResult({"dataset_fingerprint": info["sha256"]})


SPEC = Spec(
    inputs={},
    outputs={"examples": Examples},
    parameters=("seed", "data", "beam.num_shards"),
    external=source_identity,
    preflight=preflight,
)
