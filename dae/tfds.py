"""TFDS datasets from a local data_dir, for ingest, `dae denoise`'s tfds: input and the
explorer (not a stage): opening a builder, checking it is prepared and has what the caller
reads, and every failure as one line that says what to do. dae never downloads.

TFDS imports lazily: importing this module costs nothing.
"""

from __future__ import annotations

import contextlib
import logging
import re
from pathlib import Path

# What `dae data prepare` rebuilds without a network (pipeline/prepare_data.py).
OFFLINE = ("mnist", "fashion_mnist")
SPEC_PREFIX = "tfds:"


class TfdsError(ValueError):
    """A dataset dae cannot read; the message is one line for the user."""


class _NoVariantNoise(logging.Filter):
    """TFDS logs 'Variant folder .../3.0.1 has no dataset_info.json' through absl whenever
    a dataset is not prepared: the one-line error that follows says it better."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Variant folder")


@contextlib.contextmanager
def _quiet():
    absl, noise = logging.getLogger("absl"), _NoVariantNoise()
    absl.addFilter(noise)
    try:
        yield
    finally:
        absl.removeFilter(noise)


def base_name(name: str) -> str:
    """'mnist' of 'mnist:3.0.1' or 'mnist/config'."""
    return name.split(":")[0].split("/")[0]


def parse_spec(spec: str) -> tuple[str, str]:
    """'tfds:NAME/SPLIT' -> (NAME, SPLIT)."""
    name, _, split = spec.removeprefix(SPEC_PREFIX).rpartition("/")
    if not name or not split:
        raise TfdsError(f"'{spec}' is not tfds:NAME/SPLIT (e.g. tfds:mnist/test)")
    return name, split


def _first_line(e: Exception) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0]


def builder(name: str, data_dir: Path):
    """TFDS's builder of `name` reading `data_dir`, prepared or not."""
    import tensorflow_datasets as tfds

    try:
        with _quiet():
            return tfds.builder(name, data_dir=str(data_dir))
    except tfds.core.registered.DatasetNotFoundError:
        raise TfdsError(f"unknown TFDS dataset '{name}'") from None
    except OSError as e:  # the data dir itself: permissions, a full or missing disk
        raise TfdsError(f"cannot read TFDS data dir {data_dir}: {_first_line(e)}") from None
    except Exception as e:  # TFDS says a bad version or config in several ways
        raise TfdsError(f"invalid TFDS dataset '{name}': {_first_line(e)}") from None


def is_prepared(name: str, data_dir: Path) -> bool:
    """Whether `name` is prepared in `data_dir` (an unknown name is a TfdsError)."""
    try:
        found = builder(name, data_dir)
    except TfdsError as e:
        if str(e).startswith(("unknown", "cannot read")):
            raise
        return False  # TFDS says "not there" in several ways
    return prepared(found)


def prepared(found) -> bool:
    """The builder's is_prepared(), without TFDS's absl warnings when it is not."""
    with _quiet():
        return found.is_prepared()


def _download_files(found) -> str:
    try:
        names = sorted({i.filename for i in (found.url_infos or {}).values() if i.filename})
    except Exception:  # no checksums file: the dataset does not say
        names = []
    return ", ".join(names) or "its downloaded files"


def how_to_prepare(found, manual_dir: Path) -> str:
    """What makes the dataset of builder `found` readable offline, for an error message."""
    name = base_name(found.name)
    if name in OFFLINE:
        return f"run `dae data prepare {name}`"
    return (
        f"`dae data prepare` makes only {' and '.join(OFFLINE)}: put "
        f"{_download_files(found)} in {manual_dir / name} and run the pipeline (its ingest "
        f"prepares {name} from there), or copy in a data_dir where `tfds build {name}` did"
    )


def not_prepared(found, data_dir: Path, manual_dir: Path | None = None) -> TfdsError:
    """The error for a dataset not prepared in `data_dir` (nor preparable from its
    `manual_dir`, default TFDS's `<data_dir>/downloads/manual`)."""
    manual_dir = manual_dir or Path(data_dir) / "downloads" / "manual"
    return TfdsError(
        f"TFDS dataset '{found.name}' is not prepared in {data_dir} (dae never downloads): "
        + how_to_prepare(found, manual_dir)
    )


def require_split(found, split: str) -> None:
    """`split` (TFDS's slicing allowed: 'test[:10]', 'train+test') names splits it has."""
    known = found.info.splits
    for part in re.split(r"\+", split):
        base = re.split(r"\[", part)[0].strip()
        if base not in known:
            have = ", ".join(known) or "none"
            raise TfdsError(f"TFDS dataset '{found.name}' has no '{base}' split (it has: {have})")


def open_prepared(spec: str, data_dir: Path, features: tuple[str, ...]):
    """(builder, split) of 'tfds:NAME/SPLIT': prepared, with that split and `features`."""
    name, split = parse_spec(spec)
    found = builder(name, data_dir)
    if not prepared(found):
        raise not_prepared(found, data_dir)
    require_split(found, split)
    missing = [f for f in features if f not in found.info.features]
    if missing:
        raise TfdsError(f"TFDS dataset '{name}' has no {' or '.join(map(repr, missing))} feature")
    return found, split


def as_dataset(found, split: str, **kwargs):
    """The builder's tf.data split, a bad slice as a TfdsError."""
    try:
        return found.as_dataset(split=split, **kwargs)
    except Exception as e:
        raise TfdsError(f"bad TFDS split '{split}': {_first_line(e)}") from None
