"""Transform (TFX's Transform, on Apache Beam): normalize, add noise, emit (noisy, clean) pairs.

Each example's noise level (drawn when the config gives a list or a range) and then its
noise come from a generator seeded by (seed, split, example id), so the output is the same
whichever runner, worker count or shard order produced it. The dataset's pixel mean
and std are computed by a Beam combiner (an analyzer, in TFT's words) for the trainer to
bake into the model, so serving normalizes exactly as training did.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from dae.artifacts import (
    SPLITS,
    Examples,
    ExampleStatistics,
    TransformGraph,
    decode_example,
    encode_example,
    read_json,
    read_schema,
    shard_prefix,
    write_json,
)
from dae.beam import beam_options, import_beam, pipeline_runner
from dae.component import Spec, StageContext, StageError, StageResult, pick
from dae.components.noise import configured, corrupt_image, describe, parameter_paths

# ---- pure core -------------------------------------------------------------------------


def normalize(image: np.ndarray) -> np.ndarray:
    """uint8 pixels to float32 in [0, 1]."""
    return np.asarray(image, dtype=np.float32) / 255.0


def example_rng(seed: int, split: str, example_id: int) -> np.random.Generator:
    return np.random.default_rng([seed, SPLITS.index(split), int(example_id)])


def add_noise(clean: np.ndarray, noise, rng: np.random.Generator) -> np.ndarray:
    """Corrupt a [0, 1] image the configured way (components.noise), its level drawn from
    `rng` first when the config gives a list or a range; the result is clipped to [0, 1]
    and on the 8-bit grid."""
    return corrupt_image(clean, *configured(noise), rng)


def to_uint8(image: np.ndarray) -> np.ndarray:
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def transform_example(record: bytes, split: str, shape, seed: int, noise) -> bytes:
    ex = decode_example(record, shape, "image")
    clean = normalize(ex["image"])
    noisy = add_noise(clean, noise, example_rng(seed, split, ex["id"]))
    return encode_example(ex["id"], ex["label"], noisy=to_uint8(noisy), clean=ex["image"])


# ---- Beam ------------------------------------------------------------------------------


def _moments(record: bytes, shape) -> np.ndarray:
    x = normalize(decode_example(record, shape, "image")["image"]).astype(np.float64)
    return np.array([x.size, x.sum(), np.square(x).sum()])


def build_pipeline(p, examples_dir, out_dir, graph_dir, shape, splits, seed, noise, shards):
    """Wire the transform into Beam pipeline `p`; one read, one write per split."""
    import apache_beam as beam

    for split in splits:
        records = p | f"Read{split}" >> beam.io.ReadFromTFRecord(
            f"{shard_prefix(examples_dir, split)}-*.tfrecord"
        )
        _ = (
            records
            | f"Noise{split}" >> beam.Map(transform_example, split, shape, seed, noise)
            | f"Write{split}"
            >> beam.io.WriteToTFRecord(
                shard_prefix(out_dir, split), file_name_suffix=".tfrecord", num_shards=shards
            )
        )
        if split == "train":
            _ = (
                records
                | "Moments" >> beam.Map(_moments, shape)
                | "Sum" >> beam.CombineGlobally(sum)
                | "Format" >> beam.Map(lambda t: json.dumps([float(v) for v in t]))
                # Through a sink, not a side effect: workers of a distributed runner
                # don't share the driver's disk.
                | "WriteStats"
                >> beam.io.WriteToText(
                    str(graph_dir / "moments"), file_name_suffix=".json", shard_name_template=""
                )
            )


def mean_std(total) -> tuple[float, float]:
    """(count, sum, sum of squares) -> (mean, std)."""
    n, s, sq = total
    mean = s / n
    return float(mean), float(np.sqrt(max(sq / n - mean * mean, 0.0)))


def pipeline_options(beam_cfg):
    try:
        return beam_options(beam_cfg.runner, list(beam_cfg.options))
    except ValueError as e:
        raise StageError(str(e)) from None


def preflight(cfg) -> None:
    pipeline_options(cfg.beam)


def run(ctx: StageContext) -> StageResult:
    beam = import_beam()
    cfg = ctx.config
    examples, out, graph = (
        ctx.inputs["examples"],
        ctx.outputs["transformed_examples"],
        ctx.outputs["transform_graph"],
    )
    schema = read_schema(examples)
    shape = tuple(schema["shape"])
    splits = [s for s in SPLITS if schema["splits"].get(s)]
    if "train" not in splits:
        raise StageError("no training examples to transform (the 'train' split is empty)")
    out.mkdir(parents=True, exist_ok=True)
    graph.mkdir(parents=True, exist_ok=True)
    options = pipeline_options(cfg.beam)
    with beam.Pipeline(runner=pipeline_runner(options), options=options) as p:
        build_pipeline(
            p, examples, out, graph, shape, splits, cfg.seed, cfg.noise, cfg.beam.num_shards
        )
    write_json(
        out / Examples.SCHEMA, {"shape": list(shape), "dtype": "uint8", "splits": schema["splits"]}
    )
    mean, std = mean_std(read_json(graph / "moments.json"))
    moments = {"mean": mean, "std": std}
    kind, level = configured(cfg.noise)
    write_json(
        graph / TransformGraph.FILE,
        {**moments, "shape": list(shape), "noise": {"kind": kind, "level": level}},
    )
    ctx.log(
        f"transform: {describe(kind, level)}, mean={moments['mean']:.4f} std={moments['std']:.4f}"
    )
    return StageResult({"pixel_mean": moments["mean"], "pixel_std": moments["std"]})


def parameters(cfg) -> dict[str, Any]:
    return pick(cfg, ("seed", "beam", *parameter_paths(cfg.noise)))


# Statistics gate the transform: it runs only on examples that passed validation.
SPEC = Spec(
    inputs={"examples": Examples, "statistics": ExampleStatistics},
    outputs={"transformed_examples": Examples, "transform_graph": TransformGraph},
    parameters=parameters,
    preflight=preflight,
)
