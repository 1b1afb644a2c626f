"""Report: one self-contained HTML page per run (`runs/<run_id>/report/index.html`, PNGs
beside it, nothing fetched from the network) with what a person would otherwise eyeball in
a notebook: noisy / denoised / clean test images, the evaluator's tables, PSNR against the
noise level for each corruption of the sweep, the training curves and, for VAEs, samples
from the prior, the latent space coloured by label and a walk across it.

Image grids are pixel mosaics (each image pixel is a SCALE x SCALE block, PAD pixels of
white between images), so their size says exactly what grid they hold; charts are
matplotlib figures.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np

from dae.artifacts import (
    Examples,
    Model,
    ModelBlessing,
    ModelEvaluation,
    ModelRun,
    Report,
    read_json,
    read_split,
)
from dae.component import Spec, StageContext, StageResult
from dae.imaging import pca_2d

PAD, SCALE = 2, 2
EXAMPLES = 12  # test images in the denoising grids
LATENT_POINTS = 2000  # test images in the latent scatter
SEED = 0
# The evaluator's sweep columns, as the figure and the table name them.
SWEPT = {"denoised": "model", "noisy": "noisy input", "median": "median filter 3x3"}


# ---- pure core -------------------------------------------------------------------------


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def mosaic(rows: list[np.ndarray]) -> np.ndarray:
    """Rows of [N, H, W, C] images in [0, 1] -> one [h, w] (or [h, w, 3]) array, white gaps."""
    n_cols = max(len(r) for r in rows)
    h, w, c = rows[0].shape[1:]
    out = np.ones(((h + PAD) * len(rows) + PAD, (w + PAD) * n_cols + PAD, c), np.float32)
    for i, row in enumerate(rows):
        for j, image in enumerate(row):
            top, left = PAD + i * (h + PAD), PAD + j * (w + PAD)
            out[top : top + h, left : left + w] = np.clip(image, 0.0, 1.0)
    out = out.repeat(SCALE, axis=0).repeat(SCALE, axis=1)
    return out[..., 0] if c == 1 else out


def save_grid(path: Path, rows: list[np.ndarray]) -> Path:
    _plt().imsave(path, mosaic(rows), cmap="gray", vmin=0.0, vmax=1.0)
    return path


def save_curves(path: Path, history: dict[str, list[float]]) -> Path:
    """One panel per training metric (loss, mse, kl, ...), training and validation."""
    plt = _plt()
    names = sorted((k for k in history if not k.startswith("val_")), key=lambda k: (k != "loss", k))
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        epochs = np.arange(1, len(history[name]) + 1)
        ax.plot(epochs, history[name], "o-", label="train")
        if f"val_{name}" in history:
            ax.plot(epochs, history[f"val_{name}"], "o-", label="validation")
        ax.set(title=name, xlabel="epoch")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def save_sweep(path: Path, rows: list[dict[str, Any]]) -> Path:
    """One panel per swept corruption: PSNR against its level for the model, the noisy input
    (below it, the model makes images worse) and the median filter (the free baseline)."""
    plt = _plt()
    kinds = list(dict.fromkeys(r["kind"] for r in rows))
    fig, axes = plt.subplots(1, len(kinds), figsize=(4 * len(kinds), 3), squeeze=False)
    for ax, kind in zip(axes[0], kinds, strict=True):
        mine = [r for r in rows if r["kind"] == kind]
        levels = [r["level"] for r in mine]
        for name, label in SWEPT.items():
            ax.plot(levels, [r[f"psnr_{name}"] for r in mine], "o-", label=label)
        ax.set(title=kind, xlabel="level", ylabel="PSNR (dB)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def save_scatter(path: Path, z: np.ndarray, labels: np.ndarray) -> Path:
    """Codes projected on their two principal axes, coloured by label."""
    plt = _plt()
    mean, axes, _ = pca_2d(z)
    xy = (z - mean) @ axes.T
    fig, ax = plt.subplots(figsize=(6, 5))
    points = ax.scatter(xy[:, 0], xy[:, 1], c=labels, cmap="tab10", s=4)
    fig.colorbar(points, ax=ax, label="label")
    pca = "PCA of " if z.shape[1] > 2 else ""
    ax.set(title=f"{pca}z mean ({z.shape[1]}-D)", xlabel="axis 1", ylabel="axis 2")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def manifold_points(z: np.ndarray, n: int = 10, span: float = 2.0) -> np.ndarray:
    """An n x n grid of latent points across the codes' principal plane, +-span stddevs."""
    mean, axes, std = pca_2d(z)
    steps = np.linspace(-span, span, n)
    grid = [mean + a * std[0] * axes[0] + b * std[1] * axes[1] for b in steps for a in steps]
    return np.asarray(grid, np.float32)


def table(rows: list[list[Any]], header: list[str]) -> str:
    def cell(v):
        return f"{v:.4g}" if isinstance(v, float) else html.escape("—" if v is None else str(v))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def metric_tables(m: dict[str, Any]) -> list[tuple[str, str]]:
    """(title, HTML table) for each of the evaluator's tables."""
    keys = ("mse", "bce", "psnr", "ssim")
    served = m.get("baseline_metrics") or {}
    out = [
        (
            "Test split, this run's noise",
            table(
                [
                    [
                        k,
                        m.get(f"{k}_noisy"),
                        m.get(f"{k}_denoised"),
                        m.get(f"{k}_clean_input"),
                        served.get(k),
                    ]
                    for k in keys
                ],
                [
                    "metric",
                    "noisy input",
                    "denoised",
                    "clean input -> output",
                    f"served version {m.get('baseline_version') or '(none)'}, denoised",
                ],
            ),
        )
    ]
    if m.get("sweep"):
        rows = [
            [r["kind"], r["level"]] + [r[f"{k}_{s}"] for k in ("psnr", "ssim") for s in SWEPT]
            for r in m["sweep"]
        ]
        header = ["corruption", "level"] + [
            f"{k} {v}" for k in ("PSNR", "SSIM") for v in SWEPT.values()
        ]
        out.append(("The sweep (clean test images, fixed seed)", table(rows, header)))
    if m.get("psnr_per_class"):
        per = m["psnr_per_class"]
        out.append(("Denoised PSNR per class (dB)", table([list(per.values())], list(per))))
    if "neg_elbo" in m:
        rows = [
            ["-ELBO", m["neg_elbo"]],
            ["reconstruction", m["reconstruction_nats"]],
            ["KL", m["kl"]],
        ]
        if "neg_elbo_clean_input" in m:
            rows.append(["-ELBO, clean input", m["neg_elbo_clean_input"]])
        out.append(("VAE, nats per image (noisy in, clean target)", table(rows, ["", "nats"])))
    return out


def page(title: str, intro: list[str], tables, figures: list[tuple[str, str]]) -> str:
    """The HTML page: paragraphs, tables, then figures (caption, file name beside it)."""
    css = (
        "body{font-family:sans-serif;margin:2em;max-width:70em}table{border-collapse:"
        "collapse;margin:.5em 0 1.5em}td,th{border:1px solid #bbb;padding:.2em .6em;"
        "text-align:right}img{image-rendering:pixelated;max-width:100%}"
    )
    parts = [
        f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>",
        f"<style>{css}</style><h1>{html.escape(title)}</h1>",
    ]
    parts += [f"<p>{html.escape(p)}</p>" for p in intro]
    parts += [f"<h2>{html.escape(t)}</h2>{body}" for t, body in tables]
    parts += [
        f"<h2>{html.escape(cap)}</h2><img src='{html.escape(src)}' alt='{html.escape(cap)}'>"
        for cap, src in figures
    ]
    return "\n".join(parts) + "\n"


# ---- artifact I/O ----------------------------------------------------------------------


def _vae_figures(out: Path, model, test) -> list[tuple[str, str]]:
    from dae.components import vae

    n = min(LATENT_POINTS, len(test["noisy"]))
    z_mean, _ = vae.encode(model, test["noisy"][:n])
    prior = np.random.default_rng(SEED).standard_normal((100, z_mean.shape[1]))
    samples = vae.decode(model, prior)
    walk = vae.decode(model, manifold_points(z_mean))
    save_grid(out / "prior_samples.png", [samples[i : i + 10] for i in range(0, 100, 10)])
    save_scatter(out / "latent_scatter.png", z_mean, test["label"][:n])
    save_grid(out / "latent_manifold.png", [walk[i : i + 10] for i in range(0, 100, 10)])
    return [
        ("100 samples from the prior N(0, I), decoded", "prior_samples.png"),
        ("Latent codes of noisy test images, coloured by label", "latent_scatter.png"),
        ("The latent plane of that scatter, walked +-2 stddevs (10 x 10)", "latent_manifold.png"),
    ]


def run(ctx: StageContext) -> StageResult:
    import keras

    from dae.components import vae
    from dae.imaging import corrupt

    cfg, out = ctx.config, ctx.outputs["report"]
    metrics = read_json(ctx.inputs["evaluation"] / ModelEvaluation.METRICS)
    blessing = read_json(ctx.inputs["blessing"] / ModelBlessing.FILE)
    info = read_json(ctx.inputs["model"] / Model.INFO)
    history = read_json(ctx.inputs["model_run"] / ModelRun.HISTORY)
    test = read_split(ctx.inputs["transformed_examples"], "test", ("noisy", "clean"))
    model = keras.models.load_model(ctx.inputs["model"] / Model.KERAS, compile=False)

    def predict(images):
        return model.predict(images, batch_size=cfg.evaluate.batch_size, verbose=0)

    noisy, clean = test["noisy"][:EXAMPLES], test["clean"][:EXAMPLES]
    save_grid(out / "denoising.png", [noisy, predict(noisy), clean])
    # One row pair per swept corruption, at a middle level of its sweep.
    middles = [(spec.kind, spec.levels[len(spec.levels) // 2]) for spec in cfg.evaluate.sweep]
    rows = []
    for kind, level in middles:
        corrupted = corrupt(clean, kind, level, np.random.default_rng(SEED))
        rows += [corrupted, predict(corrupted)]
    figures = [("Test images: noisy (top), denoised, clean (bottom)", "denoising.png")]
    if rows:
        save_grid(out / "corruptions.png", rows)
        kinds = ", ".join(f"{kind} {level:g}" for kind, level in middles)
        figures.append((f"Each corruption ({kinds}): noisy row, then denoised", "corruptions.png"))
    if metrics.get("sweep"):
        save_sweep(out / "sweep.png", metrics["sweep"])
        figures.append(("The sweep: PSNR against the noise level", "sweep.png"))
    save_curves(out / "training_curves.png", history)
    figures.append(("Training curves", "training_curves.png"))
    if vae.parts(model) is not None:
        figures += _vae_figures(out, model, test)
    verdict = "blessed" if blessing["blessed"] else "not blessed"
    intro = [
        f"Dataset {cfg.data.dataset}, {cfg.noise.kind} noise; {metrics['test_examples']} test "
        f"images. Model: {info['family']}, {info.get('parameters', '?')} parameters, "
        f"hyperparameters {info['hyperparameters']}.",
        f"Evaluation: {verdict} ({blessing['reason']}).",
    ]
    title = f"dae: {cfg.data.dataset}, {info['family']} (made by run {ctx.run_id})"
    path = out / Report.INDEX
    path.write_text(page(title, intro, metric_tables(metrics), figures))
    ctx.log(f"report: {path}")
    return StageResult()


SPEC = Spec(
    inputs={
        "transformed_examples": Examples,
        "model": Model,
        "model_run": ModelRun,
        "evaluation": ModelEvaluation,
        "blessing": ModelBlessing,
    },
    # An output named like its stage is the stage folder itself: runs/<id>/report/.
    outputs={"report": Report},
    parameters=("data.dataset", "noise.kind", "evaluate"),
)
