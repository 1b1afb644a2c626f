import numpy as np
import pytest

from dae.artifacts import read_json, read_split
from dae.components import ingest


def test_split_is_seeded_disjoint_and_capped():
    t1, e1 = ingest.split_indices(100, 0.2, seed=1)
    t2, e2 = ingest.split_indices(100, 0.2, seed=1)
    t3, _ = ingest.split_indices(100, 0.2, seed=2)
    assert np.array_equal(t1, t2) and np.array_equal(e1, e2) and not np.array_equal(t1, t3)
    assert len(e1) == 20 and len(t1) == 80 and not set(t1) & set(e1)
    t, e = ingest.split_indices(100, 0.1, seed=1, cap=30)
    assert (len(t), len(e)) == (27, 3) and set(t) | set(e) <= set(range(100))


def test_split_refuses_too_few_examples():
    with pytest.raises(ingest.StageError, match="too few examples"):
        ingest.split_indices(1, 0.5, seed=0)


def test_fingerprint_follows_the_files(tmp_path):
    f = tmp_path / "a.tfrecord"
    f.write_bytes(b"one")
    a = ingest.fingerprint("mnist", "3.0.1", {"train": 1}, [f])
    f.write_bytes(b"two")
    b = ingest.fingerprint("mnist", "3.0.1", {"train": 1}, [f])
    assert a["sha256"] != b["sha256"] and a["files"]["a.tfrecord"] != b["files"]["a.tfrecord"]


@pytest.mark.slow
def test_ingest_reads_real_mnist_through_tfds(make_ctx, config):
    """Uses the data `make data` prepares (real MNIST through TFDS's own builder)."""
    config.data.max_train_examples = 200
    config.data.max_test_examples = 50
    ctx = make_ctx({}, ingest.SPEC.outputs, config)
    ingest.run(ctx)
    out = ctx.outputs["examples"]
    schema = read_json(out / "schema.json")
    assert schema == {
        "shape": [28, 28, 1],
        "dtype": "uint8",
        "splits": {"train": 180, "eval": 20, "test": 50},
    }
    fp = read_json(out / "fingerprint.json")
    assert fp["dataset"] == "mnist" and fp["version"] == "3.0.1" and fp["files"]
    train = read_split(out, "train", ("image",))
    assert set(np.unique(train["label"])) <= set(range(10)) and 0.05 < train["image"].mean() < 0.25
    again = make_ctx({}, ingest.SPEC.outputs, config)
    again.outputs = {"examples": ctx.run_dir / "again"}
    ingest.run(again)
    assert np.array_equal(
        read_split(again.outputs["examples"], "train", ("image",))["image"], train["image"]
    )


def test_unknown_dataset_and_missing_data_are_one_line_errors(config, tmp_path):
    config.data.dataset = "no_such_dataset"
    with pytest.raises(ingest.StageError, match="unknown TFDS dataset 'no_such_dataset'"):
        ingest.preflight(config)
    config.data.dataset = "mnist"
    config.data.data_dir = str(tmp_path / "empty")
    config.data.manual_dir = str(tmp_path / "manual")
    with pytest.raises(ingest.StageError, match="is not prepared in .* run `dae data prepare"):
        ingest.preflight(config)


def test_any_tfds_image_dataset_by_name(make_ctx, config, tmp_path):
    """A TFDS builder of our own (RGB, 16x20, no network), prepared in a temp data_dir."""
    import tensorflow_datasets as tfds

    class DaeTinyImages(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            features = {
                "image": tfds.features.Image(shape=(16, 20, 3)),
                "label": tfds.features.ClassLabel(num_classes=3),
            }
            return tfds.core.DatasetInfo(
                builder=self, features=tfds.features.FeaturesDict(features)
            )

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(30, 0), "test": self._generate_examples(10, 1)}

        def _generate_examples(self, n, seed):
            rng = np.random.default_rng(seed)
            for i in range(n):
                image = rng.integers(0, 256, (16, 20, 3), dtype=np.uint8)
                yield i, {"image": image, "label": i % 3}

    data_dir = tmp_path / "tfds"
    DaeTinyImages(data_dir=str(data_dir)).download_and_prepare()
    config.data.dataset = "dae_tiny_images"
    config.data.data_dir = str(data_dir)
    config.data.max_train_examples = None
    ctx = make_ctx({}, ingest.SPEC.outputs, config)
    ingest.run(ctx)
    schema = read_json(ctx.outputs["examples"] / "schema.json")
    assert schema == {
        "shape": [16, 20, 3],
        "dtype": "uint8",
        "splits": {"train": 27, "eval": 3, "test": 10},
    }
    labels = read_split(ctx.outputs["examples"], "test", ("image",))["label"]
    assert sorted(labels) == sorted(i % 3 for i in range(10))


@pytest.mark.parametrize(
    "dataset, message",
    [("mnist:9.9.9", "invalid TFDS dataset 'mnist:9.9.9'"), ("Bad Name!", "TFDS dataset")],
)
def test_malformed_dataset_names_are_one_line_errors(config, dataset, message):
    config.data.dataset = dataset
    with pytest.raises(ingest.StageError) as e:
        ingest.preflight(config)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_missing_label_feature_is_named(config):
    config.data.label_key = "labels"
    with pytest.raises(ingest.StageError, match="no label feature 'labels'"):
        ingest.preflight(config)
