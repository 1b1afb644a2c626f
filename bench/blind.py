"""Blind denoising (issue 25, item 2): which conv design, trained on a per-image noise level
drawn from a range, passes a lightly noisy image through and still denoises sigma = 0.5.

Trains each candidate side by side on the same MNIST images, budget and seed (the default
run's: the conv family's default point, its tuned learning rate, batch 64, the cosine
schedule and early stopping of `components.train.fit`, fresh noise each epoch) and prints
the sweep on the test images: PSNR at each sigma for the noisy input and each candidate,
SSIM at sigma 0.5, seconds per epoch. A candidate is `head:levels`:

  head    direct    the sigmoid of a convolution of the U-Net's features (before issue 25)
          gated     a learned per-pixel mix of the input and a reconstruction, starting
                    near the input (models.py's `_gated_output`)
          residual  the input's logits plus a zero-initialised correction (here only:
                    residual learning, measured against the others)
  levels  0.5 (one level), 0-0.9 (a uniform range) or 0.1,0.3,0.5 (one drawn per image)

  .venv/bin/python bench/blind.py [--limit 12000] [--epochs 7] [--candidates ...]
                                  [--sweep-examples 2000] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from unittest import mock

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SIGMAS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9)
DEFAULT_POINT = {  # the default run's tuned point (docs/benchmarks.md, "The default run")
    "filters_1": 32,
    "filters_2": 96,
    "depth": 2,
    "bottleneck": 2,
    "learning_rate": 0.00254,
}
CANDIDATES = ("direct:0.5", "direct:0-0.9", "residual:0-0.9", "gated:0-0.9")


def parse_levels(spec: str):
    """`0.5` -> 0.5; `0-0.9` -> (0.0, 0.9), a range; `0.1,0.5` -> [0.1, 0.5], a list."""
    if "," in spec:
        return [float(v) for v in spec.split(",")]
    if "-" in spec:
        low, high = (float(v) for v in spec.split("-"))
        return (low, high)
    return float(spec)


def blind_corrupt(clean, rng, levels):
    """Gaussian noise, each image's sigma drawn from `levels` (a range or a list) first."""
    from dae.imaging import corrupt

    n = (len(clean), 1, 1, 1)
    if isinstance(levels, tuple):
        sigma = rng.uniform(*levels, n)
    elif isinstance(levels, list):
        sigma = rng.choice(levels, n)
    else:
        sigma = levels
    return corrupt(clean, "gaussian", sigma, rng)


def logit_residual(hp, x, shape, images, eps: float = 1e-3):
    """Residual learning in logits: sigmoid(logit(input) + r), r from a zero-initialised
    convolution, the input clipped to [eps, 1 - eps] (0 and 1 have no logit)."""
    import keras

    from dae.components import models

    features = models._conv_features(hp, x, shape)
    r = keras.layers.Conv2D(
        shape[2], 3, padding="same", dtype="float32", kernel_initializer="zeros"
    )(features)
    p = keras.ops.clip(images, eps, 1.0 - eps)
    return models._float32_output(r + keras.ops.log(p / (1.0 - p)))


def build(head: str, mean: float, std: float, point: dict):
    """A compiled conv denoiser at `point` (hyperparameter values) with `head`."""
    from dae.components import models

    hp = models.hyperparameters()
    for name, value in point.items():
        hp.Fixed(name, value)
    hp.Fixed("output", "direct" if head == "residual" else head)
    builders = {"conv": logit_residual} if head == "residual" else {}
    with mock.patch.dict(models.AUTOENCODERS, builders):
        return models.build_model(hp, "conv", (28, 28, 1), mean, std)


def train_and_sweep(spec: str, data, args, work: Path) -> dict:
    import keras

    from dae.components import models, train
    from dae.imaging import image_metrics

    head, levels = spec.split(":")
    levels = parse_levels(levels)
    policy = models.precision("auto")
    keras.utils.set_random_seed(args.seed)
    clean = data["train"][1]
    rebuild = partial(build, head, float(clean.mean()), float(clean.std()), args.point)
    with models.dtype_policy(policy):
        model = rebuild()
    corrupt = partial(blind_corrupt, levels=levels)
    clean_eval = data["eval"][1]
    valid = (corrupt(clean_eval, np.random.default_rng(args.seed + 1)), clean_eval)
    start = time.perf_counter()
    history = train.fit(
        model,
        data["train"][:2],
        valid,
        args.epochs,
        args.batch_size,
        patience=3,
        checkpoint=work / f"{head}.weights.h5",
        noise=corrupt,
        seed=args.seed,
    )
    seconds = time.perf_counter() - start
    served = models.float32_copy(model, rebuild)
    row = {"candidate": spec, "epochs": len(history["loss"]), "params": model.count_params()}
    row["seconds_per_epoch"] = round(seconds / row["epochs"], 1)
    row["val_loss"] = min(history["val_loss"])
    for sigma, (noisy, clean) in data["sweep"].items():
        row[sigma] = image_metrics(served.predict(noisy, batch_size=512, verbose=0), clean)
    return row


def sweep(clean, seed: int) -> dict:
    """{sigma: (noisy, clean)}, each level's noise from its own fixed seed."""
    from dae.imaging import corrupt

    return {
        s: (corrupt(clean, "gaussian", s, np.random.default_rng((seed, i))), clean)
        for i, s in enumerate(SIGMAS)
    }


def table(rows: list[dict]) -> list[str]:
    width = max(14, *(len(r["candidate"]) + 1 for r in rows))
    out = [f"{'sigma':<9}" + "".join(f"{r['candidate']:>{width}}" for r in rows)]
    for s in SIGMAS:
        out.append(f"{s:<9}" + "".join(f"{r[s]['psnr']:>{width}.2f}" for r in rows))
    out.append(f"{'SSIM 0.5':<9}" + "".join(f"{r[0.5]['ssim']:>{width}.3f}" for r in rows))
    worst = [min(r[s]["psnr"] - rows[0][s]["psnr"] for s in SIGMAS) for r in rows]
    out.append(f"{'min gain':<9}" + "".join(f"{w:>{width}.2f}" for w in worst))
    labels = {"val_loss": "val loss", "epochs": "epochs", "seconds_per_epoch": "s/epoch"}
    for key, fmt in (("val_loss", ".5f"), ("epochs", "d"), ("seconds_per_epoch", ".1f")):
        cells = "".join(
            f"{'-':>{width}}" if key not in r else f"{r[key]:>{width}{fmt}}" for r in rows
        )
        out.append(f"{labels[key]:<9}" + cells)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--candidates", nargs="+", default=list(CANDIDATES))
    p.add_argument("--limit", type=int, default=None, help="MNIST training images (all)")
    p.add_argument("--epochs", type=int, default=7, help="every candidate's budget")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--sweep-examples", type=int, default=2000, help="test images scored")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--data-dir", default="~/tensorflow_datasets")
    p.add_argument("--hp", nargs="*", default=[], help="name=value: off the default point")
    p.add_argument("--json", default=None, help="also write the rows here")
    args = p.parse_args(argv)
    args.point = dict(DEFAULT_POINT)
    for item in args.hp:
        name, _, value = item.partition("=")
        if name not in DEFAULT_POINT or not value:
            p.error(f"--hp {item!r}: expected name=value, name one of {', '.join(DEFAULT_POINT)}")
        args.point[name] = type(DEFAULT_POINT[name])(value)
    for spec in args.candidates:
        head, _, levels = spec.partition(":")
        if head not in ("direct", "residual", "gated") or not levels:
            p.error(f"candidate {spec!r}: expected head:levels, head direct, residual or gated")
        try:
            parse_levels(levels)
        except ValueError:
            p.error(f"candidate {spec!r}: levels are 0.5, 0-0.9 or 0.1,0.3,0.5")
    from quality import load  # bench/quality.py: the MNIST splits as the pipeline makes them

    data = load("mnist", args.data_dir, args.limit, args.sweep_examples, sigma=0.0)
    data["sweep"] = sweep(data["test"][1], args.seed)
    from dae.imaging import image_metrics

    rows = [{"candidate": "noisy input"} | {s: image_metrics(*v) for s, v in data["sweep"].items()}]
    print(
        f"{len(data['train'][1])} training images, {args.epochs} epochs, {args.point}", flush=True
    )
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.candidates:
            rows.append(train_and_sweep(spec, data, args, Path(tmp)))
            print("\n".join(table(rows)), "\n", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
