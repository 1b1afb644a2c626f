"""Beam RunInference (dae denoise's handler, DirectRunner) vs a raw loop over the SavedModel's
signature: the same images, the same batch size, one run on this machine. Target: Beam at
least 0.7x the raw loop's throughput.

    .venv/bin/python bench/batch_inference.py [--model DIR] [--images 10000] [--batch-size 64]

Without --model, an untrained conv denoiser is built and exported to a temporary folder.
The raw loop is timed warm (model loaded, one batch run first): the limit. The Beam figure
is the whole `beam_denoise` call that `dae denoise --model` makes: pipeline construction,
model load in the worker, batching by BatchElements, inference, results written by the
workers and read back. Beam's own metric of the time spent in model calls is printed too,
to separate the handler's cost from the pipeline's. Raw and Beam runs alternate, and the
best of --repeats is reported for each, so that a busy machine hurts both alike.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def export_untrained(folder: Path, shape=(28, 28, 1)) -> Path:
    from dae.components.models import build_model, hyperparameters
    from dae.serving.format.export import push

    model = build_model(hyperparameters(), "conv", shape, 0.13, 0.31)
    _, path = push(model, folder / "denoiser")
    return path


def raw_loop(fn, images, batch_size: int):
    import numpy as np
    import tensorflow as tf

    from dae.serving.format.export import INPUT_NAME, OUTPUT_NAME

    start = time.perf_counter()
    parts = [
        fn(**{INPUT_NAME: tf.constant(images[i : i + batch_size])})[OUTPUT_NAME].numpy()
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(parts), time.perf_counter() - start


def beam_run(model_dir: Path, images, batch_size: int, options):
    from dae.serving.batch.beam import beam_denoise

    stats: dict = {}
    start = time.perf_counter()
    out = beam_denoise(images, model_dir, batch_size, options, stats=stats)
    seconds = time.perf_counter() - start
    return out, seconds, stats["inference_batch_latency_micro_secs"].sum / 1e6


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="SavedModel version folder or base path (default: build one)")
    p.add_argument("--images", type=int, default=10_000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--beam-option", action="append", default=[], metavar="FLAG")
    args = p.parse_args(argv)

    import numpy as np
    import tensorflow as tf

    from dae.beam import beam_options
    from dae.serving.batch.denoise import resolve_model, saved_model_shape
    from dae.serving.format.export import INPUT_NAME, SIGNATURE

    with tempfile.TemporaryDirectory(prefix="dae-bench-") as tmp:
        if args.model:
            model_dir = resolve_model(args.model)
            what = str(model_dir)
        else:
            model_dir = export_untrained(Path(tmp))
            what = "untrained conv denoiser (built for this run)"
        shape = saved_model_shape(model_dir)
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (args.images, *shape), np.uint8).astype(np.float32) / 255
        print(f"model: {what}, input {'x'.join(map(str, shape))}")
        print(
            f"{args.images} images, batch size {args.batch_size}, {os.cpu_count()} CPUs, "
            f"best of {args.repeats} alternating runs"
        )
        fn = tf.saved_model.load(str(model_dir)).signatures[SIGNATURE]
        fn(**{INPUT_NAME: tf.constant(images[: args.batch_size])})  # warm-up: not timed
        options = beam_options(None, args.beam_option)
        raw_s, beam_s, model_s = [], [], []
        for _ in range(args.repeats):
            raw, seconds = raw_loop(fn, images, args.batch_size)
            raw_s.append(seconds)
            beam, seconds, in_model = beam_run(model_dir, images, args.batch_size, options)
            beam_s.append(seconds)
            model_s.append(in_model)
            diff = float(np.abs(raw - beam).max())
            assert diff < 1e-5, f"Beam and raw outputs differ by {diff}"

    def runs(xs):
        return " ".join(f"{x:.2f}" for x in xs)

    n = args.images
    raw_rate, beam_rate = n / min(raw_s), n / min(beam_s)
    i = beam_s.index(min(beam_s))
    print(f"raw SavedModel loop (warm):        {raw_rate:7.0f} images/s  (s: {runs(raw_s)})")
    print(f"Beam RunInference, end to end:     {beam_rate:7.0f} images/s  (s: {runs(beam_s)})")
    print(
        f"  of which in model calls (Beam's inference_batch_latency metric): {model_s[i]:.2f} s,"
        f" {n / model_s[i]:.0f} images/s; pipeline and I/O: {min(beam_s) - model_s[i]:.2f} s"
    )
    print(f"ratio Beam / raw: {beam_rate / raw_rate:.2f}x (target >= 0.7x); outputs identical")
    return 0


if __name__ == "__main__":
    sys.exit(main())
