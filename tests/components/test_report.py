"""The report: its pure pieces, then the page a real (tiny) run makes for a VAE and a conv
autoencoder: every file exists, every PNG decodes, every grid has the size it claims."""

import numpy as np
import pytest
from PIL import Image

from dae.artifacts import write_json
from dae.components import evaluate, models, report, transform


def grid_size(rows: int, cols: int, h: int = 28, w: int = 28) -> tuple[int, int]:
    """(width, height) in pixels of a mosaic of rows x cols images."""
    s, pad = report.SCALE, report.PAD
    return ((w + pad) * cols + pad) * s, ((h + pad) * rows + pad) * s


def png_size(path) -> tuple[int, int]:
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.load()  # decodes the whole file
        return image.size


def test_mosaic_places_every_image_in_its_cell():
    rows = [np.full((3, 4, 5, 1), v, np.float32) for v in (0.0, 0.5)]
    out = report.mosaic(rows)
    s, pad = report.SCALE, report.PAD
    assert out.shape == (((4 + pad) * 2 + pad) * s, ((5 + pad) * 3 + pad) * s)
    assert out[pad * s, pad * s] == 0.0 and out[(pad + 4 + pad) * s, pad * s] == 0.5
    assert out[0, 0] == 1.0  # white gaps
    assert report.mosaic([np.zeros((2, 4, 4, 3))]).shape[-1] == 3  # colour stays colour


def test_principal_plane_and_manifold_grid():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 1, (500, 5)) * [5, 1, 0.1, 0.1, 0.1]
    mean, axes, std = report.pca_2d(z)
    assert abs(axes[0][0]) == pytest.approx(1, abs=0.01) and std[0] == pytest.approx(5, rel=0.1)
    grid = report.manifold_points(z, n=10)
    assert grid.shape == (100, 5)
    # First row walks axis 1 from -2 to +2 stddevs at axis 2 = -2 stddevs.
    assert grid[9, 0] - grid[0, 0] == pytest.approx(4 * std[0] * axes[0][0], rel=1e-5)
    assert report.manifold_points(rng.normal(0, 1, (50, 2)), n=3).shape == (9, 2)


def _sweep_row(kind, level, psnr_noisy):
    """A row of the evaluator's sweep: the model 2 dB above the input, the median filter 1."""
    row = {"kind": kind, "level": level, "psnr_noisy": psnr_noisy}
    row |= {"psnr_denoised": psnr_noisy + 2, "psnr_median": psnr_noisy + 1}
    return row | {f"ssim_{s}": 0.5 for s in report.SWEPT}


def test_the_sweep_figure_has_one_panel_per_corruption(tmp_path):
    rows = [_sweep_row(k, v, 20 - 10 * v) for k in ("gaussian", "mask") for v in (0.1, 0.5, 0.9)]
    assert png_size(report.save_sweep(tmp_path / "a.png", rows)) == (2 * 4 * 80, 3 * 80)
    one = report.save_sweep(tmp_path / "b.png", rows[:3])
    assert png_size(one) == (4 * 80, 3 * 80)


def test_tables_show_every_evaluator_table():
    metrics = {
        f"{k}_{s}": 1.5
        for k in ("mse", "bce", "psnr", "ssim")
        for s in ("noisy", "denoised", "clean_input")
    }
    metrics |= {
        "baseline_version": 3,
        "baseline_metrics": {"psnr": 20.25},
        "sweep": [_sweep_row("mask", 0.3, 8.5)],
        "psnr_per_class": {"7": 21.0},
        "neg_elbo": 90.0,
        "reconstruction_nats": 80.0,
        "kl": 10.0,
    }
    tables = dict(report.metric_tables(metrics))
    assert len(tables) == 4
    (main,) = [t for title, t in tables.items() if "this run" in title]
    assert "served version 3" in main and "20.25" in main
    (sweep,) = [t for title, t in tables.items() if "sweep" in title]
    assert "<td>mask</td><td>0.3</td><td>10.5</td><td>8.5</td><td>9.5</td>" in sweep
    assert any("<th>7</th>" in t and "21" in t for t in tables.values())
    assert any("-ELBO" in t and "90" in t for t in tables.values())


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """Transformed examples of a few digit-like images, in a module-wide temp dir."""
    from support import digit_like, write_examples

    from dae.component import StageContext
    from dae.pipeline.config import load_config

    tmp = tmp_path_factory.mktemp("report")
    cfg = load_config(None, "smoke")
    images, labels = digit_like(40, seed=4)
    raw = write_examples(tmp / "raw", {"train": (images, labels), "test": (images, labels)})
    outs = {"transformed_examples": tmp / "t", "transform_graph": tmp / "g"}
    transform.run(StageContext(cfg, {"examples": raw}, outs, "r", tmp, tmp, print))
    return tmp, cfg, outs["transformed_examples"]


def _report_for(family, tiny_run, name):
    from dae.component import StageContext

    tmp, cfg, examples = tiny_run
    d = tmp / name
    inputs = {k: d / k for k in report.SPEC.inputs if k != "transformed_examples"}
    inputs["transformed_examples"] = examples
    for k in ("model", "model_run", "evaluation", "blessing"):
        inputs[k].mkdir(parents=True)
    model = models.build_model(models.hyperparameters(), family, (28, 28, 1), 0.1, 0.3)
    models.deployable(model).save(inputs["model"] / "model.keras")
    write_json(inputs["model"] / "model.json", {"family": family, "hyperparameters": {}})
    history = {"loss": [0.3, 0.2], "val_loss": [0.31, 0.25], "mse": [0.1, 0.05]}
    write_json(inputs["model_run"] / "history.json", history)
    write_json(d / "baseline" / "baseline.json", {"version": None})  # nothing in service
    outs = {"evaluation": inputs["evaluation"], "blessing": inputs["blessing"]}
    judged = {**inputs, "baseline": d / "baseline"}
    evaluate.run(StageContext(cfg, judged, outs, "r1", tmp, tmp / "serving", lambda m: None))
    out = d / "report"
    out.mkdir()
    logged = []
    ctx = StageContext(cfg, inputs, {"report": out}, "r1", tmp, tmp / "serving", logged.append)
    summary = report.run(ctx).metrics
    assert (
        summary == {} and (out / "index.html").is_file() and logged == [f"report: {out}/index.html"]
    )
    return out


@pytest.mark.parametrize("family", ["vae", "conv_vae"])
def test_a_vae_run_report_has_every_figure(tiny_run, family):
    out = _report_for(family, tiny_run, family)
    page = (out / "index.html").read_text()
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == [
        "corruptions.png",
        "denoising.png",
        "latent_manifold.png",
        "latent_scatter.png",
        "prior_samples.png",
        "sweep.png",
        "training_curves.png",
    ]
    for name in pngs:
        assert f"src='{name}'" in page
        png_size(out / name)
    assert "http" not in page  # self-contained
    assert png_size(out / "denoising.png") == grid_size(3, report.EXAMPLES)
    # One noisy and one denoised row per swept corruption, at a middle level.
    assert png_size(out / "corruptions.png") == grid_size(2 * 3, report.EXAMPLES)
    assert "(gaussian 0.3, salt_pepper 0.2, mask 0.3)" in page
    assert png_size(out / "prior_samples.png") == grid_size(10, 10)
    assert png_size(out / "latent_manifold.png") == grid_size(10, 10)
    assert "-ELBO" in page and "blessed" in page


@pytest.mark.parametrize("family", ["conv", "dense"])
def test_an_autoencoder_report_has_no_latent_figures(tiny_run, family):
    out = _report_for(family, tiny_run, family)
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["corruptions.png", "denoising.png", "sweep.png", "training_curves.png"]
    assert "-ELBO" not in (out / "index.html").read_text()
