"""Model families and their search spaces (shared by tune and train; not a stage).

Every model takes noisy images in [0, 1] and returns denoised images in [0, 1] of the same
shape. Its first layer standardizes with the mean and std that transform measured, so the
exported graph carries the normalization: a served model cannot be fed differently from
how it was trained.
"""

from __future__ import annotations

import math

FAMILIES = ("dense", "conv")


def _dense(hp, x, shape):
    import keras

    flat = math.prod(shape)
    units = [hp.Choice(f"units_{i}", [128, 256, 512]) for i in range(hp.Int("dense_layers", 1, 3))]
    x = keras.layers.Flatten()(x)
    for u in units:
        x = keras.layers.Dense(u, activation="relu")(x)
    x = keras.layers.Dense(hp.Choice("latent_dim", [16, 32, 64, 128]), activation="relu")(x)
    for u in reversed(units):
        x = keras.layers.Dense(u, activation="relu")(x)
    x = keras.layers.Dense(flat, activation="sigmoid")(x)
    return keras.layers.Reshape(shape)(x)


def _conv(hp, x, shape):
    """Two strided convolutions down, an optional dense bottleneck, two transposed up."""
    import keras

    h, w, c = shape
    ph, pw = (-h) % 4, (-w) % 4  # pad so two stride-2 steps divide evenly
    f1 = hp.Choice("filters_1", [16, 32, 64])
    f2 = hp.Choice("filters_2", [32, 64])
    latent = hp.Choice("latent_dim", [0, 32, 64])  # 0: fully convolutional
    if ph or pw:
        x = keras.layers.ZeroPadding2D(((0, ph), (0, pw)))(x)
    x = keras.layers.Conv2D(f1, 3, strides=2, padding="same", activation="relu")(x)
    x = keras.layers.Conv2D(f2, 3, strides=2, padding="same", activation="relu")(x)
    if latent:
        grid = ((h + ph) // 4, (w + pw) // 4, f2)
        x = keras.layers.Flatten()(x)
        x = keras.layers.Dense(latent, activation="relu")(x)
        x = keras.layers.Dense(math.prod(grid), activation="relu")(x)
        x = keras.layers.Reshape(grid)(x)
    x = keras.layers.Conv2DTranspose(f2, 3, strides=2, padding="same", activation="relu")(x)
    x = keras.layers.Conv2DTranspose(f1, 3, strides=2, padding="same", activation="relu")(x)
    x = keras.layers.Conv2D(c, 3, padding="same", activation="sigmoid")(x)
    if ph or pw:
        x = keras.layers.Cropping2D(((0, ph), (0, pw)))(x)
    return x


def build_model(hp, family: str, shape, mean: float, std: float):
    """A compiled denoiser of `family` with hyperparameters drawn from `hp`."""
    import keras

    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r} (known: {', '.join(FAMILIES)})")
    shape = tuple(shape)
    inputs = keras.Input(shape=shape, name="images")
    x = keras.layers.Normalization(mean=mean, variance=std**2, name="standardize")(inputs)
    outputs = (_dense if family == "dense" else _conv)(hp, x, shape)
    model = keras.Model(inputs, outputs, name=f"{family}_denoiser")
    lr = hp.Float("learning_rate", 3e-4, 3e-3, sampling="log")
    model.compile(optimizer=keras.optimizers.Adam(lr), loss="binary_crossentropy", metrics=["mse"])
    return model


def hyperparameters(config: dict | None = None):
    """A HyperParameters object, fresh or restored from `get_config()` output."""
    import keras_tuner as kt

    return kt.HyperParameters.from_config(config) if config else kt.HyperParameters()
