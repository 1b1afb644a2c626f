"""Model families, the seed articles' baselines, and their search spaces (shared by tune,
train and the quality benchmark; not a stage).

Every model takes noisy images in [0, 1] and returns denoised images in [0, 1] of the same
shape. Its first layer standardizes with the mean and std that transform measured, so the
exported graph carries the normalization: a served model cannot be fed differently from
how it was trained.

Families are searched by the tuner; a baseline is one fixed architecture from the seed
articles (its shape; trained like every family, Adam on cross-entropy), the yardstick the
quality benchmark compares against. VAE families train through `components.vae.VAE`.
"""

from __future__ import annotations

import contextlib
import math
import re
from functools import partial
from pathlib import Path

FAMILIES = ("dense", "conv", "vae", "conv_vae")
BASELINES = ("seed_mlp", "seed_conv", "seed_vae", "seed_vae_128")
VAES = ("vae", "conv_vae", "seed_vae", "seed_vae_128")
OBJECTIVE = "val_mse"  # what every family reports alike, so one search can span families
REFINE_FILTERS = 16  # the conv family's full-resolution layer
GATE_BIAS = 4.0  # the gated output's initial gate, sigmoid(4) = 0.98: near the input


def _layers():
    import keras

    return keras.layers


def _pad(x, shape, k: int):
    """Zero-pad height and width up to multiples of `k` (k = 2 ** stride-2 steps)."""
    ph, pw = (-shape[0]) % k, (-shape[1]) % k
    padded = (shape[0] + ph, shape[1] + pw)
    if ph or pw:
        x = _layers().ZeroPadding2D(((0, ph), (0, pw)))(x)
    return x, padded, (ph, pw)


def _crop(x, pads):
    return _layers().Cropping2D(((0, pads[0]), (0, pads[1])))(x) if any(pads) else x


def _conv(x, filters: int, strides: int = 1, activation="relu"):
    return _layers().Conv2D(filters, 3, strides=strides, padding="same", activation=activation)(x)


def _up(x, filters: int, activation="relu"):
    L = _layers()
    return L.Conv2DTranspose(filters, 3, strides=2, padding="same", activation=activation)(x)


def _mlp(x, units, activation="relu"):
    for u in units:
        x = _layers().Dense(u, activation=activation)(x)
    return x


# ---- autoencoders: (hp, standardized input, shape, raw input) -> output in [0, 1] ----------


def _dense(hp, x, shape, images):
    L = _layers()
    units = [hp.Choice(f"units_{i}", [128, 256, 512]) for i in range(hp.Int("dense_layers", 1, 3))]
    x = _mlp(L.Flatten()(x), units)
    x = L.Dense(hp.Choice("latent_dim", [16, 32, 64, 128]), activation="relu")(x)
    x = _float32_output(L.Dense(math.prod(shape))(_mlp(x, reversed(units))))
    return L.Reshape(shape)(x)


def _space_to_depth(x, c: int):
    """[H, W, C] -> [H/2, W/2, 4C], lossless: the network starts at half resolution."""
    L = _layers()
    h, w = x.shape[1] // 2, x.shape[2] // 2
    x = L.Permute((1, 3, 2, 4, 5))(L.Reshape((h, 2, w, 2, c))(x))
    return L.Reshape((h, w, 4 * c))(x)


def _depth_to_space(x, c: int):
    """[H, W, 4C] -> [2H, 2W, C]: the output layer predicts each 2x2 block's pixels
    (pixel shuffle), far cheaper than a convolution at full resolution."""
    L = _layers()
    h, w = x.shape[1], x.shape[2]
    x = L.Permute((1, 3, 2, 4, 5))(L.Reshape((h, w, 2, 2, c))(x))
    return L.Reshape((2 * h, 2 * w, c))(x)


def _conv_ae(hp, x, shape, images):
    """`_conv_features` then the output: gated (`_gated_output`) or direct, the sigmoid of
    a convolution of the features (the family before issue 25, worse in bench/blind.py at
    every noise level, trained at one or blind)."""
    features = _conv_features(hp, x, shape)
    if hp.Fixed("output", "gated") == "gated":
        return _gated_output(features, images)
    return _float32_output(_layers().Conv2D(shape[2], 3, padding="same", dtype="float32")(features))


def _conv_features(hp, x, shape):
    """A small U-Net working at half and quarter resolution: space-to-depth in, `depth` 3x3
    convolutions per level (plus `bottleneck` more at the lowest, a wider view of the
    noise), the half-resolution features concatenated into the decoder so strokes survive,
    depth-to-space out to a few full-resolution channels, and one full-resolution 3x3 layer
    that sees them beside the input (edges the half-resolution grid blurs). Its latent size
    is the quarter-resolution grid times filters_2.

    The space holds only choices that paid in PSNR for their compute (the README's figures):
    a small Hyperband search samples only a few points, so no point of it may be weak."""
    L = _layers()
    f1, f2 = hp.Choice("filters_1", [32, 24]), hp.Fixed("filters_2", 96)
    depth, bottleneck = hp.Int("depth", 2, 3, default=2), hp.Choice("bottleneck", [2, 3])
    c, refine, act = shape[2], REFINE_FILTERS, "swish"
    standardized, (x, _, pads) = x, _pad(x, shape, 4)
    half = _stack(_space_to_depth(x, c), f1, depth, activation=act)
    x = _stack(_stack(half, f2, depth, strides=2, activation=act), f2, bottleneck, activation=act)
    x = L.Concatenate()([_up(x, f1, activation=act), half])
    x = _stack(x, f1, depth - 1, activation=act)
    x = _crop(_depth_to_space(_conv(x, 4 * refine // 2, activation=act), refine // 2), pads)
    return _conv(L.Concatenate()([x, standardized]), refine, activation=act)


def _gated_output(features, images):
    """g * input + (1 - g) * reconstruction, with a per-pixel gate g and both maps from
    float32 convolutions of the features. The gate starts open (GATE_BIAS) and the
    reconstruction at 0.5, so an untrained model returns nearly its input: a lightly noisy
    image need not be learned back, and under heavy noise the gate closes."""
    import keras

    L, c = _layers(), images.shape[-1]
    head = partial(L.Conv2D, c, 3, padding="same", dtype="float32", kernel_initializer="zeros")
    gate = keras.ops.sigmoid(
        head(bias_initializer=keras.initializers.Constant(GATE_BIAS))(features)
    )
    reconstruction = keras.ops.sigmoid(head()(features))
    return gate * images + (1.0 - gate) * reconstruction


def _float32_output(logits):
    """The sigmoid in float32 (the layer before it too, where the caller says so): under
    mixed precision a bfloat16 sigmoid has 8 bits of mantissa, coarse for a loss near 0
    or 1. bench/train_levers.py measures what the float32 last convolution costs."""
    return _layers().Activation("sigmoid", dtype="float32")(logits)


def _stack(x, filters: int, depth: int, strides: int = 1, activation="relu"):
    """`depth` 3x3 convolutions, the first one strided when `strides` > 1."""
    for i in range(depth):
        x = _conv(x, filters, strides if i == 0 else 1, activation)
    return x


def _seed_mlp(hp, x, shape, images):
    """Seed 001: 784-512-64-16-64-512-784, sigmoid everywhere."""
    L = _layers()
    x = _mlp(L.Flatten()(x), [512, 64, 16, 64, 512], activation="sigmoid")
    return L.Reshape(shape)(L.Dense(math.prod(shape), activation="sigmoid")(x))


def _seed_conv(hp, x, shape, images):
    """Seed 004: 4x Conv2D(8) (strides 2/1/2/1) -> Dense(z=10) -> Dense(7*7*64) -> Conv(64)
    -> UpSampling -> Conv(32) -> UpSampling -> Conv(sigmoid)."""
    L = _layers()
    x, (h, w), pads = _pad(x, shape, 4)
    for strides in (2, 1, 2, 1):
        x = _conv(x, 8, strides)
    x = L.Dense(10)(L.Flatten()(x))
    x = L.Reshape((h // 4, w // 4, 64))(L.Dense(h // 4 * w // 4 * 64, activation="relu")(x))
    x = L.UpSampling2D()(_conv(x, 64))
    x = L.UpSampling2D()(_conv(x, 32))
    return _crop(_conv(x, shape[2], activation="sigmoid"), pads)


# ---- VAEs: (hp, standardized input, shape) -> (z_mean, z_log_var, decoder(z) -> logits) ----


def _gaussian(x, latent: int):
    L = _layers()
    return L.Dense(latent, name="z_mean")(x), L.Dense(latent, name="z_log_var")(x)


def _mlp_vae(units, latent: int, activation="relu"):
    def build(hp, x, shape):
        L = _layers()
        z_mean, z_log_var = _gaussian(_mlp(L.Flatten()(x), units, activation), latent)

        def decoder(z):
            out = L.Dense(math.prod(shape))(_mlp(z, reversed(units), activation))
            return L.Reshape(shape)(out)

        return z_mean, z_log_var, decoder

    return build


def _vae(hp, x, shape):
    units = [hp.Choice(f"units_{i}", [256, 512]) for i in range(hp.Int("dense_layers", 1, 2))]
    return _mlp_vae(units, hp.Choice("latent_dim", [8, 16, 32, 64]))(hp, x, shape)


def _conv_vae(hp, x, shape):
    """The conv family's encoder (no skip: everything passes through z), a dense layer, z;
    mirrored back up to depth-to-space logits."""
    L = _layers()
    f1, f2 = hp.Choice("filters_1", [32, 24]), hp.Choice("filters_2", [64, 96])
    depth = hp.Int("depth", 1, 2, default=2)
    hidden, latent = hp.Choice("dense_units", [512, 256]), hp.Choice("latent_dim", [32, 16, 64])
    c = shape[2]
    x, (h, w), pads = _pad(x, shape, 4)
    x = _stack(_stack(_space_to_depth(x, c), f1, depth), f2, depth, strides=2)
    z_mean, z_log_var = _gaussian(L.Dense(hidden, activation="relu")(L.Flatten()(x)), latent)

    def decoder(z):
        grid = (h // 4, w // 4, f2)
        y = L.Dense(math.prod(grid), activation="relu")(L.Dense(hidden, activation="relu")(z))
        y = _stack(_up(_stack(L.Reshape(grid)(y), f2, depth - 1), f1), f1, depth - 1)
        return _crop(_depth_to_space(_conv(y, 4 * c, activation=None), c), pads)

    return z_mean, z_log_var, decoder


AUTOENCODERS = {"dense": _dense, "conv": _conv_ae, "seed_mlp": _seed_mlp, "seed_conv": _seed_conv}
VAE_BUILDERS = {
    "vae": _vae,
    "conv_vae": _conv_vae,
    "seed_vae": _mlp_vae([512, 256], 128, activation="tanh"),  # seed 000 (MNIST)
    "seed_vae_128": _mlp_vae([128], 10),  # seed 002 (Fashion-MNIST)
}


def build_model(
    hp, family, shape, mean: float, std: float, beta: float | None = 1.0, policy: str | None = None
):
    """A compiled denoiser of `family` (a family or a baseline) with hyperparameters drawn
    from `hp`. A list of families makes the family itself a hyperparameter ("family"), each
    family's own hyperparameters active only when it is chosen. `beta` is the VAEs' KL
    weight; None makes it a hyperparameter of the VAE families. `policy`: the Keras dtype
    policy to build under (Keras Tuner clears the session, and the global policy with it,
    before each trial's build)."""
    if policy is not None:
        with dtype_policy(policy):
            return build_model(hp, family, shape, mean, std, beta)
    families = [family] if isinstance(family, str) else list(family)
    for f in families:
        if f not in FAMILIES + BASELINES:
            known = ", ".join(FAMILIES + BASELINES)
            raise ValueError(f"unknown model family {f!r} (known: {known})")
    if len(families) == 1:
        return _build(hp, families[0], shape, mean, std, beta)
    family = hp.Choice("family", families)
    # Names scoped by family ("conv/latent_dim"): families never share a hyperparameter.
    with hp.conditional_scope("family", [family]), hp.name_scope(family):
        return _build(hp, family, shape, mean, std, beta)


def _build(hp, family: str, shape, mean, std, beta):
    import keras

    shape = tuple(shape)
    images = keras.Input(shape=shape, name="images")
    x = keras.layers.Normalization(mean=mean, variance=std**2, name="standardize")(images)
    tunable = family in FAMILIES
    if tunable:
        lr = hp.Float("learning_rate", 3e-4, 3e-3, sampling="log")
    else:
        lr = hp.Fixed("learning_rate", 1e-3)
    optimizer = keras.optimizers.Adam(lr)
    if family in AUTOENCODERS:
        output = AUTOENCODERS[family](hp, x, shape, images)
        model = keras.Model(images, output, name=f"{family}_denoiser")
        model.compile(optimizer=optimizer, loss="binary_crossentropy", metrics=["mse"])
        return model
    from dae.components import vae

    if beta is None and tunable:
        beta = hp.Float("beta", 0.1, 1.0, sampling="log")
    else:
        beta = hp.Fixed("beta", 1.0 if beta is None else float(beta))
    z_mean, z_log_var, decoder = VAE_BUILDERS[family](hp, x, shape)
    encoder = keras.Model(images, [z_mean, z_log_var], name=vae.ENCODER)
    z = keras.Input(shape=(z_mean.shape[-1],), name="z")
    decoder = keras.Model(z, decoder(z), name=vae.DECODER)
    model = vae.VAE(encoder, decoder, beta=beta, name=f"{family}_vae")
    model.compile(optimizer=optimizer)
    return model


def precision(setting: str, cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The Keras dtype policy for `model.precision`: `auto` is mixed_bfloat16 on a CPU with
    bf16 instructions (AVX512_BF16, AMX), where it trains faster at the same quality, and
    float32 elsewhere (emulated bf16 is slower)."""
    if setting != "auto":
        return setting
    try:
        flags = cpuinfo.read_text()
    except OSError:
        return "float32"
    return "mixed_bfloat16" if re.search(r"\b(avx512_bf16|amx_bf16)\b", flags) else "float32"


@contextlib.contextmanager
def dtype_policy(policy: str):
    """Keras' global dtype policy for the models built inside (the stage runs in a process
    that other stages share: the float32 default comes back after)."""
    import keras

    before = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(before)


def float32_copy(model, build):
    """`model` rebuilt by `build()` under float32 with its weights: what is saved, evaluated
    and served computes in float32 whatever the training arithmetic was."""
    if getattr(model.dtype_policy, "name", "float32") == "float32":
        return model
    with dtype_policy("float32"):
        copy = build()
    copy.set_weights(model.get_weights())
    return copy


def deployable(model):
    """What train saves and push exports: the model itself, or a VAE's deterministic
    denoiser (plain Keras layers, so it reloads without custom objects)."""
    from dae.components import vae

    return vae.denoiser(model) if isinstance(model, vae.VAE) else model


def hyperparameters(config: dict | None = None):
    """A HyperParameters object, fresh or restored from `get_config()` output."""
    import keras_tuner as kt

    return kt.HyperParameters.from_config(config) if config else kt.HyperParameters()
