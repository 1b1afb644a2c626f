import numpy as np
import pytest
from support import write_examples

from dae.artifacts import read_json, read_split
from dae.component import StageError
from dae.components import transform
from dae.pipeline.config import NoiseConfig

CLEAN = np.full((28, 28, 1), 0.5, np.float32)


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


def test_output_does_not_depend_on_sharding(tiny_examples, make_ctx, config, tmp_path):
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
    """The DirectRunner in multi_processing mode with 2 workers: same seeds, same output."""
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
