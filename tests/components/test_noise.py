"""components.noise: a configured noise level read as one to use or one to draw per example,
and a run whose noise level is a range, through every stage, on tiny data."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
from support import digit_like, write_examples

from dae.artifacts import Examples, read_json
from dae.component import Spec, StageResult
from dae.components import noise
from dae.pipeline import runner
from dae.pipeline.config import NoiseConfig, load_config
from dae.pipeline.dag import DAG, Node


@pytest.mark.parametrize(
    "section, level, words",
    [
        ({"kind": "gaussian"}, 0.5, "gaussian noise, level 0.5"),
        ({"kind": "mask", "mask_fraction": [0.1, 0.3]}, [0.1, 0.3], "level one of 0.1, 0.3"),
        (
            {"kind": "salt_pepper", "salt_pepper": {"min": 0, "max": 0.4}},
            {"min": 0.0, "max": 0.4},
            "salt_pepper noise, level in [0, 0.4]",
        ),
    ],
)
def test_the_configured_level_is_plain_json(section, level, words):
    kind, got = noise.configured(NoiseConfig(**section))
    assert (kind, got) == (section["kind"], level)
    assert json.loads(json.dumps(got)) == level  # as the transform graph records it
    assert words in noise.describe(kind, got)


def test_a_plain_number_is_not_drawn():
    rng = np.random.default_rng(0)
    assert noise.draw(0.3, rng) == 0.3 and noise.draw(0.3, rng, 5) == 0.3
    assert rng.random() == np.random.default_rng(0).random()  # the generator untouched


def test_a_list_yields_its_levels_and_a_range_its_interval():
    rng = np.random.default_rng(0)
    picks = noise.draw([0.1, 0.3, 0.7], rng, 3000)
    assert picks.shape == (3000, 1, 1, 1)  # one level per image of a batch
    values, counts = np.unique(picks, return_counts=True)
    assert values.tolist() == [0.1, 0.3, 0.7] and counts.min() > 900
    assert isinstance(noise.draw([0.1, 0.3], rng), float)
    drawn = noise.draw({"min": 0.2, "max": 0.6}, rng, 3000).ravel()
    assert 0.2 <= drawn.min() < 0.21 and 0.59 < drawn.max() <= 0.6
    assert np.mean(drawn < 0.4) == pytest.approx(0.5, abs=0.03)
    assert noise.draw({"min": 0.25, "max": 0.25}, rng) == 0.25


def test_parameter_paths_name_the_drawn_level():
    section = NoiseConfig(kind="mask", mask_fraction={"min": 0.1, "max": 0.5})
    assert noise.parameter_paths(section) == ("noise.kind", "noise.mask_fraction")


def _tiny_ingest(ctx):
    write_examples(
        ctx.outputs["examples"],
        {"train": digit_like(96, seed=1), "eval": digit_like(32, seed=2), "test": digit_like(32)},
    )
    return StageResult({})


@pytest.mark.slow
def test_a_run_blind_to_the_noise_level_completes(tmp_path, monkeypatch):
    """The real stages after a stand-in ingest (tiny images, no dataset on disk)."""
    ingest = SimpleNamespace(SPEC=Spec(inputs={}, outputs={"examples": Examples}), run=_tiny_ingest)
    dag = tuple(Node("ingest", ingest) if n.name == "ingest" else n for n in DAG)
    monkeypatch.setattr(runner, "DAG", dag)
    overrides = [
        "noise.stddev={min: 0.0, max: 0.9}",
        "model.family=dense",
        "tune.max_trials=1",
        "tune.max_epochs=1",
        "train.epochs=2",
    ]
    cfg = load_config(None, "smoke", overrides)
    metrics = runner.run_pipeline(cfg, tmp_path / "root", run_id="blind")
    assert metrics["status"] == "succeeded" and metrics["train_epochs"] == 2
    run_dir = tmp_path / "root" / "runs" / "blind"
    graph = read_json(run_dir / "transform" / "transform_graph" / "transform.json")
    assert graph["noise"] == {"kind": "gaussian", "level": {"min": 0.0, "max": 0.9}}
    assert runner.load_run_config(tmp_path / "root", "blind").noise.stddev.max == 0.9
    assert np.isfinite(metrics["psnr_denoised"])
