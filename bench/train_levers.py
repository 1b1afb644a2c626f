"""Where a training step of the default conv denoiser goes, and what each speed lever of
issue 18 buys: step times of variants measured interleaved in one run (these machines are
noisy; the ratios are what to read), at the default point of the conv search space.

  float32 | mixed_bfloat16 | float32 + XLA (jit_compile)
  mixed_bfloat16 without the full-resolution layer (its share of a step)
  mixed_bfloat16 with relu instead of swish at full resolution
  mixed_bfloat16 with the last convolution in float32 (the sigmoid is float32 always)
  that at half the batch (the default's batch 64: the cost per example)

  .venv/bin/python bench/train_levers.py [--batch 128] [--rounds 6] [--steps 10]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def conv_denoiser(refine: str | None = "swish", last_dtype=None):
    """The conv family's default point (components.models), with the full-resolution part
    varied: its activation, absent (None), or the last convolution's dtype."""
    import keras

    from dae.components import models as m

    L, act = keras.layers, "swish"
    images = keras.Input((28, 28, 1))
    x = L.Normalization(mean=0.13, variance=0.09)(images)
    half = m._stack(m._space_to_depth(x, 1), 32, 2, activation=act)
    y = m._stack(m._stack(half, 96, 2, strides=2, activation=act), 96, 2, activation=act)
    y = m._stack(L.Concatenate()([m._up(y, 32, activation=act), half]), 32, 1, activation=act)
    if refine is None:
        logits = m._depth_to_space(m._conv(y, 4, activation=None), 1)
    else:
        y = m._depth_to_space(m._conv(y, 32, activation=act), 8)
        y = m._conv(L.Concatenate()([y, images]), 16, activation=refine)
        logits = L.Conv2D(1, 3, padding="same", dtype=last_dtype)(y)
    model = keras.Model(images, L.Activation("sigmoid", dtype="float32")(logits))
    return model


VARIANTS = {  # name: (policy, builder kwargs, jit, fraction of --batch)
    "float32": ("float32", {}, False, 1),
    "float32 + XLA": ("float32", {}, True, 1),
    "mixed_bfloat16": ("mixed_bfloat16", {}, False, 1),
    "bf16, no full-res layer": ("mixed_bfloat16", {"refine": None}, False, 1),
    "bf16, relu at full res": ("mixed_bfloat16", {"refine": "relu"}, False, 1),
    "bf16, last conv float32": ("mixed_bfloat16", {"last_dtype": "float32"}, False, 1),
    "that, half the batch": ("mixed_bfloat16", {"last_dtype": "float32"}, False, 0.5),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    import keras

    x = np.random.default_rng(0).random((args.batch, 28, 28, 1), dtype=np.float32)
    models, batches = {}, {}
    for name, (policy, kwargs, jit, fraction) in VARIANTS.items():
        batches[name] = max(1, int(args.batch * fraction))
        keras.config.set_dtype_policy(policy)
        model = conv_denoiser(**kwargs)
        model.compile(
            optimizer=keras.optimizers.Adam(1e-3),
            loss="binary_crossentropy",
            metrics=["mse"],
            jit_compile=jit,
        )
        for _ in range(3):
            model.train_on_batch(x[: batches[name]], x[: batches[name]])
        models[name] = model
    keras.config.set_dtype_policy("float32")
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.rounds):  # interleaved: each round times every variant once
        for name, model in models.items():
            b = x[: batches[name]]
            start = time.perf_counter()
            for _ in range(args.steps):
                model.train_on_batch(b, b)
            times[name].append((time.perf_counter() - start) / args.steps)
    per_example = {name: min(seen) / batches[name] for name, seen in times.items()}
    print(f"best of {args.rounds} rounds of {args.steps} steps (ratios per example):")
    for name, seen in times.items():
        print(
            f"  {name:<26} batch {batches[name]:4d} {min(seen) * 1e3:7.1f} ms/step "
            f"{per_example[name] * 1e6:6.0f} us/example "
            f"{per_example[name] / per_example['float32']:.2f}x float32"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
