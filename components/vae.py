"""Variational autoencoders: the trainer, the saved denoiser, the ELBO (shared by train,
evaluate, report and export; not a stage).

A VAE is two functional models, an encoder (images -> z mean, z log-variance) and a decoder
(z -> pixel logits). `VAE` wraps them for training: denoising (noisy in, clean target) with
a Bernoulli decoder, loss = sigmoid cross-entropy summed over pixels + beta * KL to N(0, I),
in nats per image (beta = 1: the negative ELBO). What train saves is `denoiser(vae)`, a
plain functional model (decode the z mean, squash to [0, 1]) that holds both parts as named
layers: it reloads with `keras.models.load_model` and no custom objects, and export finds
the parts by name for its `encode` / `decode` signatures.
"""

from __future__ import annotations

import keras
import numpy as np

ENCODER, DECODER = "vae_encoder", "vae_decoder"  # layer names the saved denoiser keeps


def kl_divergence(z_mean, z_log_var):
    """KL(N(mean, exp(log_var)) || N(0, I)) per row, in nats (closed form)."""
    ops = keras.ops
    return -0.5 * ops.sum(1.0 + z_log_var - ops.square(z_mean) - ops.exp(z_log_var), axis=-1)


def bernoulli_nll(clean, logits):
    """-log p(clean | logits) per image, in nats: sigmoid cross-entropy summed over pixels
    (stable for any logit; gray targets are fine, the sum is then a cross-entropy)."""
    ops = keras.ops
    ce = ops.maximum(logits, 0.0) - logits * clean + ops.log1p(ops.exp(-ops.abs(logits)))
    return ops.sum(ops.reshape(ce, (ops.shape(ce)[0], -1)), axis=-1)


@keras.saving.register_keras_serializable(package="dae")
class VAE(keras.Model):
    """encoder: images -> [z_mean, z_log_var]; decoder: z -> logits of the image's shape."""

    def __init__(self, encoder, decoder, beta: float = 1.0, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.encoder, self.decoder = encoder, decoder
        self.beta, self.seed = float(beta), seed  # None: drawn from keras' global seed
        self.seed_generator = keras.random.SeedGenerator(self.seed)
        names = ("loss", "reconstruction", "kl", "mse")
        self.trackers = {n: keras.metrics.Mean(name=n) for n in names}
        self.built = True  # both parts are built functional models

    @property
    def metrics(self):
        return list(self.trackers.values())

    def call(self, images, training=False):
        z_mean, _ = self.encoder(images, training=training)
        return self.decode(z_mean, training=training)

    def decode(self, z, training=False):
        return keras.ops.sigmoid(self._logits(z, training))

    def _logits(self, z, training: bool):
        """The decoder's logits in float32 (under mixed precision it computes in bf16)."""
        return keras.ops.cast(self.decoder(z, training=training), "float32")

    def _terms(self, noisy, clean, training: bool):
        """(loss, reconstruction, kl, mse) per image, in float32; z is sampled
        (reparameterisation)."""
        ops = keras.ops
        z_mean, z_log_var = (ops.cast(t, "float32") for t in self.encoder(noisy, training=training))
        eps = keras.random.normal(ops.shape(z_mean), seed=self.seed_generator)
        logits = self._logits(z_mean + ops.exp(0.5 * z_log_var) * eps, training)
        rec = bernoulli_nll(clean, logits)
        kl = kl_divergence(z_mean, z_log_var)
        # The metric a denoiser is judged by, on the deterministic output when evaluating.
        out = ops.sigmoid(logits if training else self._logits(z_mean, False))
        mse = ops.mean(ops.reshape(ops.square(out - clean), (ops.shape(out)[0], -1)), axis=-1)
        return rec + self.beta * kl, rec, kl, mse

    def _record(self, terms):
        for tracker, value in zip(self.trackers.values(), terms, strict=True):
            tracker.update_state(keras.ops.mean(value))
        return {name: t.result() for name, t in self.trackers.items()}

    def train_step(self, data):
        import tensorflow as tf

        noisy, clean = data[0], data[1]
        with tf.GradientTape() as tape:
            terms = self._terms(noisy, clean, training=True)
            # Gradients are summed across replicas (MultiWorkerMirroredStrategy): average.
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            loss = keras.ops.mean(terms[0]) / replicas
        grads = tape.gradient(loss, self.trainable_weights)
        self.optimizer.apply_gradients(zip(grads, self.trainable_weights, strict=True))
        return self._record(terms)

    def test_step(self, data):
        return self._record(self._terms(data[0], data[1], training=False))

    def get_config(self):
        return {
            "name": self.name,
            "beta": self.beta,
            "seed": self.seed,
            "encoder": keras.saving.serialize_keras_object(self.encoder),
            "decoder": keras.saving.serialize_keras_object(self.decoder),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        encoder = keras.saving.deserialize_keras_object(config.pop("encoder"))
        decoder = keras.saving.deserialize_keras_object(config.pop("decoder"))
        return cls(encoder, decoder, **config)


def denoiser(model: VAE):
    """The deployable model: images -> sigmoid(decoder(z mean)), deterministic."""
    images = keras.Input(model.encoder.inputs[0].shape[1:], name="images")
    z_mean, _ = model.encoder(images)
    out = keras.layers.Activation("sigmoid", name="denoised")(model.decoder(z_mean))
    return keras.Model(images, out, name="vae_denoiser")


def parts(model):
    """(encoder, decoder) of a VAE trainer or a saved VAE denoiser; None for other models."""
    if isinstance(model, VAE):
        return model.encoder, model.decoder
    names = {layer.name for layer in getattr(model, "layers", ())}
    if {ENCODER, DECODER} <= names:
        return model.get_layer(ENCODER), model.get_layer(DECODER)
    return None


def _in_batches(part, x: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """The outputs of `part` (an encoder or decoder) on `x`, called eagerly a batch at a
    time. Not Keras' predict: it traces a tf.function for each model and input shape, all
    from one Python function, and TensorFlow warns of "retracing" when a process (evaluate
    and report, a tuned run's models) traces it a few times in a row."""
    if not len(x):
        raise ValueError("no images to encode or decode")
    chunks = []
    for start in range(0, len(x), batch_size):
        out = part(keras.ops.convert_to_tensor(x[start : start + batch_size]), training=False)
        chunks.append([np.asarray(t) for t in (out if isinstance(out, list | tuple) else [out])])
    return [np.concatenate(outputs) for outputs in zip(*chunks, strict=True)]


def encode(model, images: np.ndarray, batch_size: int = 512):
    """(z_mean, z_log_var) as numpy."""
    z_mean, z_log_var = _in_batches(parts(model)[0], np.asarray(images, np.float32), batch_size)
    return z_mean, z_log_var


def decode(model, z: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Images in [0, 1] from latent points (the prior's, or a walk through the space)."""
    (logits,) = _in_batches(parts(model)[1], np.asarray(z, np.float32), batch_size)
    return 1.0 / (1.0 + np.exp(-logits))


def latent_dim(model) -> int:
    return int(parts(model)[0].outputs[0].shape[-1])


def elbo(model, noisy: np.ndarray, clean: np.ndarray, seed: int = 0, batch_size: int = 512):
    """Test-set -ELBO of the clean images given the noisy ones, in nats per image, with
    beta = 1 whatever the model trained with: {neg_elbo, reconstruction_nats, kl}. One
    reparameterised sample per image from a seeded generator, so it is reproducible."""
    z_mean, z_log_var = encode(model, noisy, batch_size)
    eps = np.random.default_rng(seed).standard_normal(z_mean.shape).astype(np.float32)
    z = z_mean + np.exp(0.5 * z_log_var) * eps
    (logits,) = _in_batches(parts(model)[1], z, batch_size)
    rec = np.asarray(bernoulli_nll(clean.astype(np.float32), logits), np.float64)
    kl = np.asarray(kl_divergence(z_mean, z_log_var), np.float64)
    return {
        "neg_elbo": float(np.mean(rec + kl)),
        "reconstruction_nats": float(np.mean(rec)),
        "kl": float(np.mean(kl)),
    }
