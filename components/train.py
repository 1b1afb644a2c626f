"""Train (TFX's Trainer): the best hyperparameters on the whole training split.

The learning rate is annealed to near zero over the epoch budget (cosine), EarlyStopping
watches the eval split, ModelCheckpoint keeps the best weights, TensorBoard logs
and the loss curves (`history.json`) in the model_run artifact. The output is a Keras
`.keras` file of the deployable model (for a VAE, its deterministic denoiser, which keeps
the encoder and decoder as named parts); the pusher exports it.

When TF_CONFIG names several workers, every one of them runs this stage and they train as
one under MultiWorkerMirroredStrategy (`components.distributed`); the chief writes the
outputs, the others the same files to a throwaway directory, and their record is the
chief's.
"""

from __future__ import annotations

import hashlib
import math
from functools import partial
from pathlib import Path
from typing import Any

from dae.artifacts import (
    Examples,
    HyperParameters,
    Model,
    ModelRun,
    TransformGraph,
    WorkingState,
    read_json,
    read_split,
    write_json,
)
from dae.component import Spec, StageContext, StageError, StageResult, pick
from dae.components import distributed, noise
from dae.components.models import (
    VAES,
    build_model,
    deployable,
    dtype_policy,
    float32_copy,
    hyperparameters,
    precision,
)

# ---- pure core -------------------------------------------------------------------------


def fresh_noise(clean, corrupt, batch_size: int, seed: int):
    """(noisy, clean) batches whose noise is drawn anew every epoch, in a new order: a
    denoiser trained on one fixed draw learns that draw's noise (its validation loss turns
    up after a few epochs) instead of the corruption. `corrupt(clean, rng=...)` -> noisy
    draws each image's level (when the config gives a list or a range), then its noise.
    Each batch is a function of (seed, epoch, index) alone, so prefetching cannot change it."""
    import keras
    import numpy as np

    class FreshNoise(keras.utils.PyDataset):
        def __init__(self):
            super().__init__()
            self.start(0)

        def start(self, epoch: int):
            """Draw for `epoch` (fit's callback says which: a resumed fit starts mid-way)."""
            self.epoch = epoch
            self.order = np.random.default_rng((seed, epoch)).permutation(len(clean))

        def __len__(self):
            return math.ceil(len(clean) / batch_size)

        def __getitem__(self, i):
            rows = np.sort(self.order[i * batch_size : (i + 1) * batch_size])
            target = clean[rows]
            return corrupt(target, rng=np.random.default_rng((seed, self.epoch, i))), target

        def on_epoch_end(self):
            self.start(self.epoch + 1)

    return FreshNoise()


def fit(
    model,
    train,
    valid,
    epochs: int,
    batch_size: int,
    patience: int,
    checkpoint,
    logs=None,
    backup=None,
    callbacks=(),
    noise=None,
    seed: int = 0,
):
    """Fit on (noisy, clean) arrays; leaves the model with the best epoch's weights.
    With `backup`, an interrupted fit resumes from its last finished epoch. With `noise`
    (`corrupt(clean, rng=...)`), the training images are corrupted anew each epoch and
    train's noisy half is not used."""
    import keras

    extra = list(callbacks)
    callbacks = [] if backup is None else [keras.callbacks.BackupAndRestore(str(backup))]
    lr = float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
    callbacks += [
        keras.callbacks.LearningRateScheduler(partial(cosine, lr=lr, epochs=epochs)),
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience),
        keras.callbacks.ModelCheckpoint(
            str(checkpoint), monitor="val_loss", save_best_only=True, save_weights_only=True
        ),
    ]
    if logs is not None:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=str(logs)))
    callbacks += extra
    if noise is None:
        data = {"x": train[0], "y": train[1], "batch_size": batch_size}
    else:
        data = {"x": fresh_noise(train[1], noise, batch_size, seed)}
        callbacks.append(_following_epochs(data["x"]))
    history = model.fit(
        **data, validation_data=valid, epochs=epochs, callbacks=callbacks, verbose=0
    )
    if not Path(checkpoint).exists():
        raise StageError("training diverged: val_loss was never finite, no weights were saved")
    model.load_weights(str(checkpoint))  # the best epoch's, not the last one's
    return history.history


def _reporting(progress):
    """Each finished epoch: its losses (the console adds the pace and the time left)."""
    import keras

    class Report(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            progress.advance(loss=logs.get("loss"), val_loss=logs.get("val_loss"))

        def on_train_end(self, logs=None):
            progress.close()

    return Report()


def _following_epochs(dataset):
    """Tells fresh noise which epoch begins: after BackupAndRestore, not epoch 0."""
    import keras

    class EpochOf(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            dataset.start(epoch)

    return EpochOf()


def cosine(epoch: int, _current=None, *, lr: float, epochs: int) -> float:
    """The learning rate for `epoch` (from 0): lr at the start, lr / 2 halfway, near 0 last."""
    return lr * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))


def _backup_key(best: dict, moments: dict, train_cfg, beta) -> str:
    """Backups are only restored into the very same training job."""
    key = repr((best["family"], best["config"], moments, train_cfg.model_dump(), beta))
    return hashlib.sha256(key.encode()).hexdigest()[:12]


# ---- artifact I/O ----------------------------------------------------------------------


def run(ctx: StageContext) -> StageResult:
    job = distributed.training_job()  # before any other TensorFlow work; None: one process
    import keras

    cfg = ctx.config
    examples = ctx.inputs["transformed_examples"]
    moments = read_json(ctx.inputs["transform_graph"] / TransformGraph.FILE)
    best = read_json(ctx.inputs["best_hyperparameters"] / HyperParameters.FILE)
    keras.utils.set_random_seed(cfg.seed)
    hp = hyperparameters(best["config"])
    build = partial(
        build_model,
        hp,
        best.get("families", best["family"]),
        moments["shape"],
        moments["mean"],
        moments["std"],
        beta=cfg.model.beta,
    )
    policy = precision(cfg.model.precision)
    with distributed.scope(job), dtype_policy(policy):
        model = build()
    train = read_split(examples, "train", ("noisy", "clean"))
    valid = read_split(examples, "eval", ("noisy", "clean"))
    backup = ctx.outputs["checkpoints"] / _backup_key(best, moments, cfg.train, cfg.model.beta)
    dirs = distributed.worker_dirs(
        job, ctx.outputs["model"], ctx.outputs["model_run"], backup=backup
    )
    fresh = None
    if cfg.train.fresh_noise and job is None:
        kind, level = noise.configured(cfg.noise)
        fresh = partial(noise.corrupt_batch, kind=kind, level=level)
    elif cfg.train.fresh_noise:  # every worker must see the same batches as one process
        ctx.log("train: fresh noise is off under MultiWorkerMirroredStrategy (transform's)")
    with dirs as (out, run_dir, backup):
        out.mkdir(parents=True, exist_ok=True)
        history = fit(
            model,
            (train["noisy"], train["clean"]),
            (valid["noisy"], valid["clean"]),
            cfg.train.epochs,
            cfg.train.batch_size,
            cfg.train.patience,
            checkpoint=out / "best.weights.h5",
            logs=run_dir / "logs",
            backup=backup,
            noise=fresh,
            seed=cfg.seed,
            callbacks=[_reporting(ctx.progress("epoch", cfg.train.epochs))],
        )
        final = deployable(float32_copy(model, build))
        final.save(out / Model.KERAS)
        history = {k: [float(v) for v in vs] for k, vs in history.items()}
        write_json(run_dir / ModelRun.HISTORY, history)
        write_json(
            out / Model.INFO,
            {
                "family": best["family"],
                "vae": best["family"] in VAES,
                "hyperparameters": hp.values,
                "parameters": model.count_params(),
                "training_precision": policy,
            },
        )
    best_val = min(history["val_loss"])
    ctx.log(f"train: {len(history['loss'])} epochs ({policy}), best val_loss={best_val:.4f}")
    summary = {"train_epochs": len(history["loss"]), "train_best_val_loss": best_val}
    if job is None:
        return StageResult(summary)
    digest = distributed.weights_digest(final)
    role = "chief" if job.chief else "worker"
    ctx.log(f"train: {role} {job.index} of {job.workers} workers, weights sha256 {digest}")
    summary |= {"train_workers": job.workers, "train_weights_sha256": digest}
    return StageResult(summary, worker=not job.chief)


def parameters(cfg) -> dict[str, Any]:
    """Fresh noise reads the noise section (transform's noise is in its input already)."""
    fresh = noise.parameter_paths(cfg.noise) if cfg.train.fresh_noise else ()
    picked = pick(cfg, ("seed", "model", "train", *fresh))
    # What `auto` means on this machine: bf16 and float32 training are different results.
    picked["model"] = {**picked["model"], "precision": precision(cfg.model.precision)}
    return picked


SPEC = Spec(
    inputs={
        "transformed_examples": Examples,
        "transform_graph": TransformGraph,
        "best_hyperparameters": HyperParameters,
    },
    outputs={"model": Model, "model_run": ModelRun, "checkpoints": WorkingState},
    parameters=parameters,
    resumable=("checkpoints",),  # epoch backups: a re-run resumes instead of starting over
    secondary=lambda: distributed.secondary("train"),
)
