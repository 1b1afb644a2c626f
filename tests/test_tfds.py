"""The three readers of TFDS (ingest, `dae denoise`'s tfds: input, the explorer's test
images) refuse data that is not prepared alike: one line saying what works for that very
dataset, and no absl noise before it."""

from __future__ import annotations

import logging

import pytest

from dae.components import ingest
from dae.serving.batch import sources
from dae.serving.explorer import examples


def _refusal(reader: str, name: str, config, tmp_path) -> str:
    data_dir = tmp_path / "tfds"
    (data_dir / name).mkdir(parents=True)  # an empty dataset folder: TFDS's usual leftover
    if reader == "ingest":
        config.data.dataset, config.data.data_dir = name, str(data_dir)
        config.data.manual_dir = str(tmp_path / "manual")
        with pytest.raises(ingest.StageError) as e:
            ingest.preflight(config)
    elif reader == "denoise":
        with pytest.raises(sources.SourceError) as e:
            sources.open_source(f"tfds:{name}/test", data_dir=data_dir)
    else:
        with pytest.raises(examples.ExamplesError) as e:
            examples.load(f"tfds:{name}/test", 10, data_dir)
    return str(e.value)


@pytest.mark.parametrize("reader", ["ingest", "denoise", "explorer"])
def test_unprepared_data_says_what_works_for_that_dataset(reader, config, tmp_path):
    message = _refusal(reader, "cifar10", config, tmp_path)
    assert "\n" not in message and "is not prepared in" in message
    assert "dae data prepare cifar10" not in message  # it refuses cifar10
    assert "only mnist and fashion_mnist" in message
    assert "cifar-10-binary.tar.gz" in message and "tfds build cifar10" in message
    assert "run `dae data prepare mnist`" in _refusal(reader, "mnist", config, tmp_path / "m")


@pytest.mark.parametrize("reader", ["ingest", "denoise", "explorer"])
def test_unprepared_data_is_the_one_line_only(reader, config, tmp_path, caplog):
    """TFDS's absl 'Variant folder .../3.0.1 has no dataset_info.json' is not shown."""
    caplog.set_level(logging.DEBUG)
    _refusal(reader, "mnist", config, tmp_path)
    assert [r.getMessage() for r in caplog.records if "Variant folder" in r.getMessage()] == []


def test_an_unreadable_data_dir_is_not_called_unprepared(tmp_path, monkeypatch):
    """An OSError with no message (a permission or disk problem) is one line naming the
    data dir: not a traceback, not "run dae data prepare"."""
    import tensorflow_datasets as tfds

    from dae import tfds as dae_tfds

    def refuse(*args, **kwargs):
        raise PermissionError()

    monkeypatch.setattr(tfds, "builder", refuse)
    with pytest.raises(
        dae_tfds.TfdsError, match=r"^cannot read TFDS data dir .*: PermissionError$"
    ):
        dae_tfds.is_prepared("mnist", tmp_path)
