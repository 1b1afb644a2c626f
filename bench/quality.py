"""Denoising quality: the seed articles' baselines against the tuned model, side by side.

In one run and on the same epoch budget, trains the seed baselines (seed_mlp, seed_conv,
seed_vae, seed_vae_128), the tuned model (the pipeline's own search: its tuner, its subset,
its families), a tuned VAE (a search over the VAE families, beta = 1) and a clean VAE (the
conv_vae family searched and trained on clean images, the seeds' own task), then scores them
on the MNIST and Fashion-MNIST test splits with gaussian noise (sigma 0.5): PSNR, SSIM and,
for VAEs, the test -ELBO in nats per image of the clean images given the noisy ones (the
denoising bound, `neg_elbo` in metrics.json) and of the clean images given themselves (the
bound VAE papers report, `neg_elbo_clean_input`). The data are the prepared TFDS datasets
(`dae data prepare`); noise is drawn from fixed seeds, so every model sees the same images,
and every model trains as the pipeline's trainer does (with `train.fresh_noise`, new noise
on the training images each epoch).

Then the sweep table: PSNR and SSIM at each gaussian level of the config's evaluate.sweep on
the first --sweep-images test images, for the noisy input, the trained denoisers and, with
the model `classical` (in the default list), the classical denoisers of
bench/classical_denoisers.py (a 3x3 median, total variation, non-local means, BM3D, each
parameter tuned for each level on held-out train images); `--models classical` alone.

    .venv/bin/python bench/quality.py [--quick] [--epochs 20] [--batch-size 64] [--models ...]
                                      [--datasets mnist fashion_mnist] [--json results.json]
                                      [--sweep-images 1000] [--heldout-images 200]

Targets (MNIST): tuned >= best seed baseline + 3.0 dB and >= 21 dB; a VAE at <= 95 nats.
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

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SEEDS = ("seed_mlp", "seed_conv", "seed_vae", "seed_vae_128")
TARGET_GAIN_DB, TARGET_PSNR_DB, TARGET_ELBO = 3.0, 21.0, 95.0
SIGMA = 0.5


def tfds_split(dataset: str, data_dir: str, split: str, n: int | None = None):
    """(images in [0, 1], labels) of the first `n` examples of a prepared TFDS split."""
    import tensorflow_datasets as tfds

    ds = tfds.load(
        dataset,
        split=split,
        batch_size=-1,
        data_dir=os.path.expanduser(data_dir),
        download=False,
    )
    data = tfds.as_numpy(ds)
    return data["image"][:n].astype(np.float32) / 255.0, data["label"][:n]


def load(dataset: str, data_dir: str, limit: int | None, test_limit: int | None, sigma: float):
    """{split: (noisy, clean, labels)}: train / eval as the pipeline splits them (90 / 10),
    the official test split, each corrupted from its own fixed seed."""
    from dae.imaging import corrupt

    images, labels = tfds_split(dataset, data_dir, "train", limit)
    n_eval = len(images) // 10
    parts = {
        "eval": (images[:n_eval], labels[:n_eval]),
        "train": (images[n_eval:], labels[n_eval:]),
        "test": tfds_split(dataset, data_dir, "test", test_limit),
    }
    out = {}
    for i, (name, (clean, y)) in enumerate(parts.items()):
        out[name] = (corrupt(clean, "gaussian", sigma, np.random.default_rng(1000 + i)), clean, y)
    return out


def tuned_hyperparameters(cfg, families, data, moments, work: Path, beta):
    """The pipeline's tune stage, on the same subset sizes, in a scratch directory."""
    from dae.components import tune
    from dae.components.models import build_model

    hypermodel = partial(build_model, family=families, beta=beta, **moments)
    tuner = tune.make_tuner(
        cfg.tune.tuner, hypermodel, work, "+".join(families), cfg.seed, cfg.tune
    )
    t, e = cfg.tune.train_examples, cfg.tune.eval_examples
    train, valid = data["train"], data["eval"]
    return tune.search(
        tuner,
        (train[0][:t], train[1][:t]),
        (valid[0][:e], valid[1][:e]),
        cfg.tune.max_epochs,
        cfg.tune.batch_size,
    )


def train_and_score(
    name, family, hp, data, moments, cfg, epochs, work: Path, beta=1.0, sigma=SIGMA, sweep=None
):
    """Fit on the whole training split for `epochs` (EarlyStopping as the pipeline's), score
    the deployable model on the test split, and, for a denoiser, `sweep(model)` its row of the
    sweep. `sigma` 0: the data are clean in, clean out."""
    import keras

    from dae.components import evaluate, train, vae
    from dae.components.models import build_model, deployable
    from dae.imaging import corrupt

    keras.utils.set_random_seed(cfg.seed)
    model = build_model(hp, family, beta=beta, **moments)
    start = time.perf_counter()
    fresh = None
    if cfg.train.fresh_noise and sigma:
        fresh = partial(corrupt, kind="gaussian", level=sigma)
    history = train.fit(
        model,
        data["train"][:2],
        data["eval"][:2],
        epochs,
        cfg.train.batch_size,
        cfg.train.patience,
        checkpoint=work / f"{name}.weights.h5",
        noise=fresh,
        seed=cfg.seed,
    )
    seconds = time.perf_counter() - start
    served = deployable(model)
    noisy, clean, _ = data["test"]
    m = evaluate.image_metrics(served.predict(noisy, batch_size=512, verbose=0), clean)
    row = {
        "model": name,
        "family": hp.values.get("family") or (family if isinstance(family, str) else family[0]),
        "params": model.count_params(),
        "epochs": len(history["loss"]),
        "psnr": m["psnr"],
        "ssim": m["ssim"],
        "neg_elbo": None,
        "train_seconds": round(seconds, 1),
        "hyperparameters": hp.values,
    }
    if sweep is not None and sigma:
        row["sweep"] = sweep(served)
    if vae.parts(served) is not None:
        row["neg_elbo"] = vae.elbo(served, noisy, clean)["neg_elbo"]
        row["neg_elbo_clean"] = vae.elbo(served, clean, clean)["neg_elbo"]
    return row


def bench_dataset(dataset, args, cfg) -> list[dict]:
    import classical_denoisers as cd

    from dae.components import evaluate
    from dae.components.models import FAMILIES, VAES, hyperparameters

    data = load(dataset, cfg.data.data_dir, args.limit, args.test_limit, SIGMA)
    sweep_test = data["test"][1][: args.sweep_images]

    def sweep(model):
        predict = partial(model.predict, batch_size=512, verbose=0)
        return cd.scored(predict, sweep_test, sweep_levels(cfg))

    clean = data["train"][1]
    moments = {"shape": clean.shape[1:], "mean": float(clean.mean()), "std": float(clean.std())}
    noisy = evaluate.image_metrics(data["test"][0], data["test"][1])
    rows = [{"model": "noisy input", "family": "-", "psnr": noisy["psnr"], "ssim": noisy["ssim"]}]
    print(_line(dataset, rows[0]), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for seed in (s for s in SEEDS if s in args.models):
            rows.append(
                train_and_score(
                    seed,
                    seed,
                    hyperparameters(),
                    data,
                    moments,
                    cfg,
                    args.epochs,
                    work,
                    sweep=sweep,
                )
            )
            print(_line(dataset, rows[-1]), flush=True)
        vaes = [f for f in FAMILIES if f in VAES]
        # "clean VAE": the seed articles' task (clean in, clean out), where -ELBO is the
        # figure VAE papers and the seeds report; the convolutional VAE searched and trained
        # on clean images.
        clean_data = {k: (c, c, y) for k, (_, c, y) in data.items()}
        searches = {
            "tuned": (cfg.tune.families or [cfg.model.family], cfg.model.beta, data),
            "tuned VAE": (vaes, 1.0, data),
            "clean VAE": (["conv_vae"], 1.0, clean_data),
        }
        for name, (families, beta, d) in searches.items():
            if name not in args.models:
                continue
            sigma = SIGMA if d is data else 0.0
            start = time.perf_counter()
            hp = tuned_hyperparameters(cfg, families, d, moments, work / name, beta)
            tune_s = round(time.perf_counter() - start, 1)
            row = train_and_score(
                name, families, hp, d, moments, cfg, args.epochs, work, beta, sigma, sweep
            )
            rows.append(row | {"tune_seconds": tune_s, "sigma": sigma})
            print(_line(dataset, rows[-1]), flush=True)
    return [r | {"dataset": dataset} for r in rows]


def sweep_levels(cfg) -> list[float]:
    """The gaussian levels of the evaluator's sweep (evaluate.sweep)."""
    return next((s.levels for s in cfg.evaluate.sweep if s.kind == "gaussian"), [SIGMA])


def sweep_table(dataset, args, cfg, models: list[dict]) -> list[dict]:
    """The sweep table: the noisy input, the classical denoisers (bench/classical_denoisers.py)
    if `classical` is in --models, and the trained `models`' sweep rows; a row for each of the
    first two."""
    import classical_denoisers as cd

    names = list(cd.DENOISERS) if "classical" in args.models else []
    heldout, _ = tfds_split(dataset, cfg.data.data_dir, f"train[:{args.heldout_images}]")
    test, _ = tfds_split(dataset, cfg.data.data_dir, f"test[:{args.sweep_images}]")
    print(
        f"\n{dataset}: gaussian sigma, {len(test)} test images, parameters tuned on the first "
        f"{len(heldout)} train images",
        flush=True,
    )
    start = time.perf_counter()
    log = partial(print, flush=True)
    results = cd.sweep(heldout, test, sweep_levels(cfg), names=names, log=log)
    print(f"({time.perf_counter() - start:.0f} s)\n")
    print("\n".join(cd.table(results | {r["model"]: r["sweep"] for r in models})), flush=True)
    return [
        {"dataset": dataset, "model": n, "family": "classical", "sweep": r}
        for n, r in results.items()
    ]


def _fmt(v, spec: str, width: int):
    return f"{'-':>{width}}" if v is None else f"{v:>{width}{spec}}"


def _line(dataset, r) -> str:
    return (
        f"{dataset:<14} {r['model']:<13} {r['family']:<13} {_fmt(r.get('epochs'), '', 3)} "
        f"{_fmt(r.get('params'), ',', 9)} {r['psnr']:7.2f} {r['ssim']:6.3f} "
        f"{_fmt(r.get('neg_elbo'), '.1f', 8)} {_fmt(r.get('neg_elbo_clean'), '.1f', 8)} "
        f"{_fmt(r.get('train_seconds'), '.1f', 7)}"
    )


def verdicts(rows: list[dict]) -> list[str]:
    """The issue's targets, on MNIST."""
    mnist = {r["model"]: r for r in rows if r["dataset"] == "mnist"}
    if "tuned" not in mnist:
        return []
    seeds = [mnist[s] for s in SEEDS if s in mnist]
    best_seed = max(seeds, key=lambda r: r["psnr"]) if seeds else None
    noisy_in = [
        (r["neg_elbo"], r["model"])
        for r in mnist.values()
        if r.get("neg_elbo") and r.get("sigma", SIGMA)
    ]
    best = min(noisy_in, default=(float("nan"), "-"))
    cleans = [(r["neg_elbo_clean"], r["model"]) for r in mnist.values() if r.get("neg_elbo_clean")]
    best_clean = min(cleans, default=(float("nan"), "-"))

    def ok(b):
        return "PASS" if b else "FAIL"

    out = []
    if best_seed:
        gain = mnist["tuned"]["psnr"] - best_seed["psnr"]
        out.append(
            f"tuned vs best seed ({best_seed['model']}): {gain:+.2f} dB "
            f"(target >= +{TARGET_GAIN_DB}): {ok(gain >= TARGET_GAIN_DB)}"
        )
    return out + [
        f"tuned PSNR {mnist['tuned']['psnr']:.2f} dB (target >= {TARGET_PSNR_DB}): "
        f"{ok(mnist['tuned']['psnr'] >= TARGET_PSNR_DB)}",
        f"best denoising VAE -ELBO (noisy in, clean out) {best[0]:.1f} nats, {best[1]}",
        f"best VAE -ELBO of clean images (the seeds' measure) {best_clean[0]:.1f} nats, "
        f"{best_clean[1]} (target <= {TARGET_ELBO}): {ok(best_clean[0] <= TARGET_ELBO)}",
    ]


def _count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a number of images >= 1, got {text!r}")
    return int(text)


def main(argv=None) -> int:
    from dae.pipeline.config import load_config

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=["mnist", "fashion_mnist"])
    p.add_argument("--epochs", type=int, default=20, help="every model's budget")
    p.add_argument("--batch-size", type=int, default=64, help="every model's batch size")
    p.add_argument("--config", default=None, help="a dae config (tuner, families, budget)")
    p.add_argument("--quick", action="store_true", help="a smoke check on a few thousand images")
    p.add_argument(
        "--models",
        nargs="+",
        default=[*SEEDS, "tuned", "tuned VAE", "clean VAE", "classical"],
        help="a subset of the rows to train (default: all); classical: the classical sweep",
    )
    p.add_argument("--sweep-images", type=_count, default=1000, help="test images of the sweep")
    p.add_argument("--heldout-images", type=_count, default=200, help="train images tuned on")
    p.add_argument("--json", default=None, help="also write the rows here")
    args = p.parse_args(argv)
    overrides = []
    args.limit = args.test_limit = None
    if args.quick:  # every model, tiny: a check that the benchmark runs, not a measurement
        args.limit, args.test_limit = 3000, 500
        args.sweep_images, args.heldout_images = 50, 20
        overrides = [
            "tune.tuner=random",
            "tune.max_trials=2",
            "tune.max_epochs=1",
            "tune.train_examples=1000",
            "tune.eval_examples=200",
        ]
    overrides.append(f"train.batch_size={args.batch_size}")
    cfg = load_config(args.config, "default", overrides)
    args.epochs = 2 if args.quick else args.epochs
    rows = []
    if set(args.models) - {"classical"}:
        print(
            f"{'dataset':<14} {'model':<13} {'family':<13} {'ep':>3} {'params':>9} {'PSNR':>7} "
            f"{'SSIM':>6} {'-ELBO':>8} {'clean':>8} {'train s':>7}",
            flush=True,
        )
        for dataset in args.datasets:
            rows += bench_dataset(dataset, args, cfg)
        print()
        for line in verdicts(rows):
            print(line)
    for dataset in args.datasets:
        models = [r for r in rows if r["dataset"] == dataset and "sweep" in r]
        rows += sweep_table(dataset, args, cfg, models)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
