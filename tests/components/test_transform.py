import hashlib

import numpy as np
import pytest
from support import write_examples

from dae.artifacts import read_json, read_split
from dae.component import StageError
from dae.components import transform
from dae.components.noise import LEVELS
from dae.pipeline.config import NoiseConfig

CLEAN = np.full((28, 28, 1), 0.5, np.float32)
GREY = np.full((64, 64, 1), 128 / 255, np.float32)  # an 8-bit grey: noise never leaves it as is
RANGE = {"min": 0.02, "max": 0.2}  # gaussian noise of 0.2 is little clipped on the grey


def _noise(kind, **kw):
    return NoiseConfig(kind=kind, **kw)


@pytest.mark.parametrize("kind", ["gaussian", "salt_pepper", "mask"])
def test_noise_is_clipped_and_deterministic(kind):
    noise = _noise(kind)
    a = transform.add_noise(CLEAN, noise, transform.example_rng(7, "train", 3))
    b = transform.add_noise(CLEAN, noise, transform.example_rng(7, "train", 3))
    c = transform.add_noise(CLEAN, noise, transform.example_rng(7, "train", 4))
    assert a.dtype == np.float32 and a.min() >= 0 and a.max() <= 1
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_a_single_level_is_the_noise_it_always_was():
    """Pinned to the bytes the transform gave before levels could be drawn (bd1682a)."""
    image = (np.arange(28 * 28).reshape(28, 28, 1) * 7 % 256).astype(np.uint8)
    digest = hashlib.sha256()
    for kind in ("gaussian", "salt_pepper", "mask"):
        for i in range(5):
            rng = transform.example_rng(42, "train", i)
            noisy = transform.add_noise(transform.normalize(image), _noise(kind), rng)
            digest.update(transform.to_uint8(noisy).tobytes())
    assert digest.hexdigest() == (
        "2af0df6804fbde302ca2e108b45c54018df10b6ac00725e3b0e5d106729c57ad"
    )


def _amounts(kind, level, n=200, seed=7):
    """Each of n examples' noise measured from noisy - clean: the gaussian stddev, or the
    fraction of pixels hit."""
    noise = _noise(kind, **{LEVELS[kind]: level})
    out = []
    for i in range(n):
        noisy = transform.add_noise(GREY, noise, transform.example_rng(seed, "train", i))
        out.append(np.std(noisy - GREY) if kind == "gaussian" else np.mean(noisy != GREY))
    return np.array(out)


@pytest.mark.parametrize("kind", ["gaussian", "salt_pepper", "mask"])
def test_a_range_draws_each_examples_level_uniformly(kind):
    amounts = _amounts(kind, RANGE)
    # Within the range (the measure's own error aside), spread over all of it, evenly.
    assert RANGE["min"] - 0.01 < amounts.min() < RANGE["min"] + 0.01
    assert RANGE["max"] - 0.01 < amounts.max() < RANGE["max"] + 0.02
    middle = (RANGE["min"] + RANGE["max"]) / 2
    assert 0.4 < np.mean(amounts < middle) < 0.6
    assert np.quantile(amounts, 0.25) == pytest.approx(RANGE["min"] + 0.045, abs=0.015)


def test_a_list_draws_only_its_levels():
    amounts = _amounts("gaussian", [0.03, 0.1, 0.2])
    nearest = np.array([0.03, 0.1, 0.2])[np.abs(amounts[:, None] - [0.03, 0.1, 0.2]).argmin(1)]
    assert amounts == pytest.approx(nearest, rel=0.06)
    assert all(0.2 < np.mean(nearest == v) < 0.45 for v in (0.03, 0.1, 0.2))


@pytest.mark.parametrize("level", [[0.1, 0.5], {"min": 0.0, "max": 0.9}])
def test_a_drawn_level_is_a_function_of_seed_split_and_id(level):
    noise = _noise("gaussian", stddev=level)

    def noisy(seed, split, i):
        return transform.add_noise(GREY, noise, transform.example_rng(seed, split, i))

    assert np.array_equal(noisy(7, "train", 3), noisy(7, "train", 3))
    for other in ((8, "train", 3), (7, "eval", 3), (7, "train", 4)):
        assert not np.array_equal(noisy(7, "train", 3), noisy(*other))


def test_noise_amounts_match_the_config():
    rng = np.random.default_rng(0)
    big = np.full((200, 200), 128 / 255, np.float32)  # a pixel of an 8-bit image
    g = transform.add_noise(big, _noise("gaussian", stddev=0.1), rng)
    assert np.std(g - big) == pytest.approx(0.1, rel=0.05)
    sp = transform.add_noise(big, _noise("salt_pepper", salt_pepper=0.2), rng)
    assert np.mean(sp != big) == pytest.approx(0.2, abs=0.01)
    assert set(np.unique(sp[sp != big])) == {0.0, 1.0}
    m = transform.add_noise(big, _noise("mask", mask_fraction=0.3), rng)
    assert np.mean(m == 0) == pytest.approx(0.3, abs=0.01)
    # Noisy images stay on the 8-bit grid, as the examples store them.
    np.testing.assert_array_equal(np.round(g * 255) / 255, g)


@pytest.mark.parametrize(
    "beam, message",
    [
        ({"runner": "Bogus"}, "unknown Beam runner 'Bogus'"),
        (
            {"options": ["--direct_num_worker=2"]},
            "unknown Beam pipeline option(s): direct_num_worker",
        ),
    ],
)
def test_bad_beam_settings_are_refused_up_front(config, beam, message):
    for key, value in beam.items():
        setattr(config.beam, key, value)
    with pytest.raises(StageError) as e:
        transform.preflight(config)
    assert message in str(e.value)


def test_beam_transform_writes_pairs_and_moments(tiny_examples, make_ctx, config):
    ctx = make_ctx({"examples": tiny_examples}, transform.SPEC.outputs)
    summary = transform.run(ctx).metrics
    out = ctx.outputs["transformed_examples"]
    pairs = read_split(out, "train", ("noisy", "clean"))
    raw = read_split(tiny_examples, "train", ("image",))
    assert len(pairs["id"]) == 96 and np.array_equal(pairs["clean"], raw["image"])
    assert np.array_equal(pairs["label"], raw["label"])
    assert not np.array_equal(pairs["noisy"], pairs["clean"])
    assert summary["pixel_mean"] == pytest.approx(raw["image"].mean(), abs=1e-5)
    assert summary["pixel_std"] == pytest.approx(raw["image"].std(), abs=1e-4)
    graph = read_json(ctx.outputs["transform_graph"] / "transform.json")
    assert graph["shape"] == [28, 28, 1] and graph["noise"]["kind"] == "gaussian"


def test_a_drawn_level_is_recorded_and_said(tiny_examples, make_ctx, config):
    config.noise.stddev = {"min": 0.0, "max": 0.9}
    ctx = make_ctx({"examples": tiny_examples}, transform.SPEC.outputs)
    said = []
    ctx.log = said.append
    transform.run(ctx)
    graph = read_json(ctx.outputs["transform_graph"] / "transform.json")
    assert graph["noise"] == {"kind": "gaussian", "level": {"min": 0.0, "max": 0.9}}
    assert said[-1].startswith("transform: gaussian noise, level in [0, 0.9], mean=")
    pairs = read_split(ctx.outputs["transformed_examples"], "train", ("noisy", "clean"))
    error = np.std(pairs["noisy"] - pairs["clean"], axis=(1, 2, 3))
    assert error.min() < 0.1 and error.max() > 0.3  # examples' levels differ


@pytest.mark.parametrize("level", [0.5, {"min": 0.0, "max": 0.9}])
def test_output_does_not_depend_on_sharding(tiny_examples, make_ctx, config, tmp_path, level):
    config.noise.stddev = level
    ctx = make_ctx({"examples": tiny_examples}, transform.SPEC.outputs)
    transform.run(ctx)
    first = read_split(ctx.outputs["transformed_examples"], "test", ("noisy",))
    config.beam.num_shards = 3
    resharded = write_examples(  # the same examples, in 4 input shards
        tmp_path / "resharded",
        {
            s: (lambda d: (d["image"], d["label"]))(
                read_split(tiny_examples, s, ("image",), raw=True)
            )
            for s in ("train", "eval", "test")
        },
        shards=4,
    )
    out2 = tmp_path / "again"
    ctx2 = make_ctx({"examples": resharded}, ())
    ctx2.outputs = {"transformed_examples": out2 / "t", "transform_graph": out2 / "g"}
    transform.run(ctx2)
    assert len(list((out2 / "t").glob("test-*.tfrecord"))) == 3
    second = read_split(out2 / "t", "test", ("noisy",))
    assert np.array_equal(first["noisy"], second["noisy"])


@pytest.mark.slow
def test_two_beam_workers_make_the_same_examples(tiny_examples, make_ctx, config, tmp_path):
    """The DirectRunner in multi_processing mode with 2 workers: same seeds, same output,
    levels drawn per example included."""
    config.noise.stddev = {"min": 0.0, "max": 0.9}
    ctx = make_ctx({"examples": tiny_examples}, transform.SPEC.outputs)
    one = transform.run(ctx).metrics
    config.beam.options = ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]
    ctx2 = make_ctx({"examples": tiny_examples}, ())
    ctx2.outputs = {
        "transformed_examples": tmp_path / "mp" / "t",
        "transform_graph": tmp_path / "g",
    }
    two = transform.run(ctx2).metrics
    assert two == pytest.approx(one)
    for split in ("train", "eval", "test"):
        a = read_split(ctx.outputs["transformed_examples"], split, ("noisy", "clean"))
        b = read_split(ctx2.outputs["transformed_examples"], split, ("noisy", "clean"))
        assert all(np.array_equal(a[k], b[k]) for k in ("id", "label", "noisy", "clean"))
