"""Export a Keras 3 denoiser as a TF Serving servable, and read TF Serving's layout.

Layout: `<base>/<version>/` with integer versions; TF Serving ignores every other name,
which is what makes the temporary-directory-then-rename push invisible until complete.

Signature `serving_default`: input `images`, float32 [N, H, W, C] in [0, 1] (divide 8-bit
pixels by 255); output `denoised`, float32 of the same shape in [0, 1]. The graph clips the
input to [0, 1] and standardizes it with the training statistics (inside the model).

A VAE also gets `encode` (`images` -> `z_mean`, `z_log_var`, float32 [N, Z]) and `decode`
(`z`, float32 [N, Z], any real values -> `images` in [0, 1]), so a client can sample from
the prior N(0, I) or walk the latent space. `serving_default` stays deterministic: it
decodes the z mean.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import time
import uuid
from pathlib import Path

SIGNATURE = "serving_default"
INPUT_NAME = "images"
OUTPUT_NAME = "denoised"
ENCODE, DECODE = "encode", "decode"  # a VAE's extra signatures
LATENT_NAME = "z"
WARMUP_FILE = "tf_serving_warmup_requests"
SERVABLE_FILE = "dae_servable.json"  # the input range the graph expects, for validation


INT64_MAX = 2**63 - 1


def _is_version(name: str) -> bool:
    """ASCII digits only, as TF Serving's SimpleAtoi ('²' or '١' pass str.isdigit()), and an
    int64: `00000123` is version 123, as in TF Serving's own test models."""
    return name.isascii() and name.isdigit() and int(name) <= INT64_MAX


def version_dirs(base: Path) -> dict[int, Path]:
    """{version: folder} under `base`, ascending. Two spellings of one number (`123`,
    `0123`): the shortest name serves, as the version a pusher would write."""
    base = Path(base)
    if not base.is_dir():
        return {}
    found: dict[int, Path] = {}
    for p in sorted(base.iterdir(), key=lambda p: (len(p.name), p.name), reverse=True):
        if _is_version(p.name) and p.is_dir():
            found[int(p.name)] = p
    return dict(sorted(found.items()))


def versions(base: Path) -> list[int]:
    """The servable versions under `base`, ascending; temporary folders are not versions."""
    return list(version_dirs(base))


def latest_version(base: Path) -> int | None:
    found = versions(base)
    return found[-1] if found else None


def export_servable(model, path: Path, vae_parts=None) -> None:
    """Write `model` as a SavedModel with the serving signature described above; with
    `vae_parts`, a VAE's (encoder, decoder), also `encode` and `decode`."""
    import keras
    import tensorflow as tf

    shape = tuple(model.input_shape[1:])
    archive = keras.export.ExportArchive()
    archive.track(model)

    def serve(images):
        return {OUTPUT_NAME: model(tf.clip_by_value(images, 0.0, 1.0), training=False)}

    images_spec = [tf.TensorSpec((None, *shape), tf.float32, name=INPUT_NAME)]
    archive.add_endpoint(name=SIGNATURE, fn=serve, input_signature=images_spec)
    ranges = {SIGNATURE: [0.0, 1.0]}
    if vae_parts is not None:
        _add_vae_endpoints(archive, *vae_parts, images_spec)
        ranges |= {ENCODE: [0.0, 1.0], DECODE: None}  # z is unbounded
    archive.write_out(str(path), verbose=False)
    extra = Path(path) / "assets.extra"
    extra.mkdir(exist_ok=True)
    with tf.io.TFRecordWriter(str(extra / WARMUP_FILE)) as w:
        for record in warmup_records(shape):
            w.write(record)
    servable = {"input_range": [0.0, 1.0], "signature_input_ranges": ranges}
    (extra / SERVABLE_FILE).write_text(json.dumps(servable))


def _add_vae_endpoints(archive, encoder, decoder, images_spec) -> None:
    import keras
    import tensorflow as tf

    def encode(images):
        z_mean, z_log_var = encoder(tf.clip_by_value(images, 0.0, 1.0), training=False)
        return {"z_mean": z_mean, "z_log_var": z_log_var}

    def decode(z):
        return {INPUT_NAME: keras.ops.sigmoid(decoder(z, training=False))}

    latent = int(encoder.outputs[0].shape[-1])
    archive.add_endpoint(name=ENCODE, fn=encode, input_signature=images_spec)
    archive.add_endpoint(
        name=DECODE,
        fn=decode,
        input_signature=[tf.TensorSpec((None, latent), tf.float32, name=LATENT_NAME)],
    )


def warmup_records(shape, batch_sizes=(1, 64)) -> list[bytes]:
    """PredictionLogs TF Serving replays at load, so the first real request is not the one
    that pays for graph tracing and memory allocation."""
    import numpy as np
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    records = []
    for n in batch_sizes:
        request = predict_pb2.PredictRequest()
        request.model_spec.signature_name = SIGNATURE
        images = np.full((n, *shape), 0.5, np.float32)
        request.inputs[INPUT_NAME].CopyFrom(tf.make_tensor_proto(images))
        log = prediction_log_pb2.PredictionLog(
            predict_log=prediction_log_pb2.PredictLog(request=request)
        )
        records.append(log.SerializeToString())
    return records


def _next_version(base: Path) -> int:
    """One past every integer-named entry, files included (renaming onto one fails)."""
    taken = [int(p.name) for p in base.iterdir() if _is_version(p.name)]
    return max(taken, default=0) + 1


def _prune_stale(base: Path, older_than_s: float = 3600) -> None:
    """Temporary folders of pushers that were killed; a live push is never this old."""
    now = time.time()
    for p in base.glob(".tmp-*"):
        if now - p.stat().st_mtime > older_than_s:
            shutil.rmtree(p, ignore_errors=True)


def push(
    model, base: Path, extra_files: dict[str, bytes] | None = None, vae_parts=None
) -> tuple[int, Path]:
    """Export as the next version (see export_servable), atomically: build beside the
    target, then rename.

    Two pushers racing for one version number cannot both win the rename; the loser takes
    the next number.
    """
    base = Path(base)
    base.mkdir(parents=True, exist_ok=True)
    _prune_stale(base)
    tmp = base / f".tmp-{uuid.uuid4().hex}"
    try:
        export_servable(model, tmp, vae_parts)
        for name, data in (extra_files or {}).items():
            target = tmp / "assets.extra" / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        for _ in range(100):
            version = _next_version(base)
            try:
                os.rename(tmp, base / str(version))
                return version, base / str(version)
            except OSError as e:
                if e.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR):
                    raise
        raise RuntimeError(f"could not claim a version number under {base}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_servable(path: Path):
    """numpy in, numpy out through the SavedModel's serving_default signature."""
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))
    signature = loaded.signatures[SIGNATURE]

    def denoise(images, batch_size: int = 1024):
        import numpy as np

        parts = [
            signature(**{INPUT_NAME: tf.constant(images[i : i + batch_size], tf.float32)})
            for i in range(0, len(images), batch_size)
        ]
        return np.concatenate([p[OUTPUT_NAME].numpy() for p in parts])

    denoise.loaded = loaded  # keeps the variables alive as long as the function
    denoise.input_shape = tuple(signature.structured_input_signature[1][INPUT_NAME].shape)
    return denoise
