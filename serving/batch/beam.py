"""`dae denoise --model`: RunInference over a SavedModel on Apache Beam, with a ModelHandler
around tf.saved_model.load (Beam's stock TF handlers cannot load Keras 3 exports)."""

from __future__ import annotations

from pathlib import Path

from dae.beam import beam_options, import_beam, pipeline_runner

_progress = None  # set while an in-process pipeline runs: called with each batch's size


def _define_handler():
    from apache_beam.ml.inference.base import ModelHandler

    class SavedModelHandler(ModelHandler):
        """RunInference over a SavedModel's serving signature: numpy HWC images in [0, 1]
        in, denoised numpy images out. Loads with tf.saved_model.load, which, unlike Beam's
        stock TF handlers (keras.models.load_model underneath), reads Keras 3 exports."""

        def __init__(self, model_dir: str, batch_size: int):
            super().__init__()
            self.model_dir, self.batch_size = str(model_dir), int(batch_size)

        def load_model(self):
            import tensorflow as tf

            return tf.saved_model.load(self.model_dir)

        def run_inference(self, batch, model, inference_args=None):
            import numpy as np
            import tensorflow as tf

            from dae.serving.format.export import INPUT_NAME, OUTPUT_NAME, SIGNATURE

            if _progress is not None:
                _progress(len(batch))
            images = tf.constant(np.stack(batch), tf.float32)
            out = model.signatures[SIGNATURE](**{INPUT_NAME: images})[OUTPUT_NAME].numpy()
            return list(out)

        def batch_elements_kwargs(self):
            return {"min_batch_size": self.batch_size, "max_batch_size": self.batch_size}

        def get_num_bytes(self, batch) -> int:
            return sum(x.nbytes for x in batch)  # the default pickles the whole batch

        def get_metrics_namespace(self) -> str:
            return "dae_denoise"

    SavedModelHandler.__module__, SavedModelHandler.__qualname__ = __name__, "SavedModelHandler"
    return SavedModelHandler


def handler_class():
    if "SavedModelHandler" not in globals():
        globals()["SavedModelHandler"] = _define_handler()
    return globals()["SavedModelHandler"]


def __getattr__(name: str):
    # The handler subclasses Beam's ModelHandler: defined on first use, so that importing
    # this module (every `dae` command does, for its flags) doesn't import Beam. It is
    # then a module attribute, so pickle finds it by name in Beam's workers.
    if name == "SavedModelHandler":
        return handler_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _read_rows(span, path: str):
    """(start, stop) -> keyed images, read from the inputs file by whichever worker runs it."""
    import numpy as np

    start, stop = span
    block = np.array(np.load(path, mmap_mode="r")[start:stop])  # one read, then views
    for offset, image in enumerate(block):
        yield start + offset, image


def _write_shard(batch, folder: str) -> int:
    """(index, image) pairs -> one file in `folder`, renamed into place only when whole."""
    import uuid

    import numpy as np

    from dae.files import atomic_write

    def arrays(f):  # two arrays, one after the other (no zip, no CRC)
        np.save(f, np.array([i for i, _ in batch], np.int64))
        np.save(f, np.stack([y for _, y in batch]))

    atomic_write(Path(folder) / f"{uuid.uuid4().hex}.npy", arrays)
    return len(batch)


def beam_denoise(images, model_dir, batch_size: int, options=None, progress=None, stats=None):
    """float32 [N, H, W, C] -> the denoised array, by RunInference with our handler, keyed by
    position. Runners whose workers share this machine's disk: the images reach the workers
    through a temporary .npy (given to beam.Create, they would be pickled and bz2'd into the
    pipeline graph, which costs more than the inference), and each worker writes its results
    as .npy shards (renamed into place whole; a retried bundle rewrites the same values) that
    are read back here. `stats`, if given, gets Beam's RunInference metrics."""
    global _progress
    import shutil
    import tempfile

    import numpy as np

    beam = import_beam()
    from apache_beam.metrics.metric import MetricsFilter
    from apache_beam.ml.inference.base import KeyedModelHandler, RunInference

    n, shape = len(images), images.shape[1:]
    # Spans of whole batches, a few per worker; Create's reshuffle spreads them.
    per = max(batch_size, -(-n // 16 // batch_size) * batch_size)
    spans = [(i, min(n, i + per)) for i in range(0, n, per)]
    handler = KeyedModelHandler(handler_class()(model_dir, batch_size))
    tmp = Path(tempfile.mkdtemp(prefix="dae-denoise-"))
    try:
        np.save(tmp / "inputs.npy", np.asarray(images, np.float32))
        (tmp / "out").mkdir()
        _progress = progress
        options = options or beam_options(None, [])
        p = beam.Pipeline(runner=pipeline_runner(options), options=options)
        _ = (
            p
            | "Spans" >> beam.Create(spans)
            | "Read" >> beam.FlatMap(_read_rows, str(tmp / "inputs.npy"))
            | "Denoise" >> RunInference(handler)
            | "Gather" >> beam.BatchElements(min_batch_size=1024, max_batch_size=1024)
            | "Write" >> beam.Map(_write_shard, str(tmp / "out"))
        )
        result = p.run()
        result.wait_until_finish()
        out = np.empty((n, *shape), np.float32)
        seen = np.zeros(n, bool)
        for shard in (tmp / "out").glob("*.npy"):
            with open(shard, "rb") as f:
                index = np.load(f)
                out[index], seen[index] = np.load(f), True
        if not seen.all():
            raise RuntimeError(f"the pipeline returned {seen.sum()} of {n} images")
        if stats is not None:
            for m in result.metrics().query(MetricsFilter().with_namespace("dae_denoise"))[
                "distributions"
            ]:
                stats[m.key.metric.name] = m.committed
        return out
    finally:
        _progress = None
        shutil.rmtree(tmp, ignore_errors=True)
