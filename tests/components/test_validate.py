import numpy as np
import pytest

from dae.artifacts import read_json
from dae.component import StageError
from dae.components import validate


def _stats(images, labels=None):
    labels = np.zeros(len(images), int) if labels is None else labels
    return validate.compute_statistics(images, labels)


def test_statistics_of_a_known_split():
    images = np.stack([np.zeros((28, 28, 1)), np.ones((28, 28, 1))]).astype(np.float32)
    s = _stats(images, np.array([3, 5]))
    assert s["count"] == 2 and s["shape"] == [28, 28, 1]
    assert (s["min"], s["max"], s["mean"], s["std"]) == (0.0, 1.0, 0.5, 0.5)
    assert s["label_counts"] == {"3": 1, "5": 1} and s["nan_count"] == 0


def test_clean_data_has_no_anomalies():
    ok = _stats(np.full((4, 28, 28, 1), 0.2, np.float32))
    assert validate.find_anomalies({"train": ok, "eval": ok, "test": ok}, "uint8") == []


@pytest.mark.parametrize(
    "images, dtype, needle",
    [
        (np.full((4, 28, 28, 2), 0.2, np.float32), "uint8", "image shape [28, 28, 2]"),
        (np.full((4, 28, 28), 0.2, np.float32), "uint8", "image shape [28, 28]"),
        (np.full((4, 28, 28, 1), 0.2, np.float32), "float64", "images are float64"),
        (np.zeros((0, 28, 28, 1), np.float32), "uint8", "has 0 examples"),
        (np.full((4, 28, 28, 1), np.nan, np.float32), "uint8", "4 NaN pixel values"[2:]),
        (np.full((4, 28, 28, 1), 3.0, np.float32), "uint8", "not [0, 1]"),
    ],
)
def test_each_anomaly_is_named(images, dtype, needle):
    ok = _stats(np.full((4, 28, 28, 1), 0.2, np.float32))
    found = validate.find_anomalies({"train": ok, "eval": ok, "test": _stats(images)}, dtype)
    assert any(needle in p for p in found), found


def test_mean_drift_is_an_anomaly():
    ok = _stats(np.full((4, 28, 28, 1), 0.2, np.float32))
    found = validate.find_anomalies({"train": ok}, "uint8", expected_mean=0.5, mean_tolerance=0.1)
    assert found and "train pixel mean 0.2000" in found[0]


def test_run_writes_statistics_and_stops_on_anomaly(tiny_examples, make_ctx, config):
    ctx = make_ctx({"examples": tiny_examples}, validate.SPEC.outputs)
    summary = validate.run(ctx).metrics
    stats = read_json(ctx.outputs["statistics"] / "statistics.json")
    assert stats["splits"]["train"]["count"] == 96
    assert summary["train_mean"] == pytest.approx(stats["splits"]["train"]["mean"])

    config.validate_.expected_mean = 0.9
    ctx = make_ctx({"examples": tiny_examples}, validate.SPEC.outputs, config)
    with pytest.raises(StageError, match="data anomaly: train pixel mean"):
        validate.run(ctx)
    assert read_json(ctx.outputs["statistics"] / "anomalies.json")
