"""Keras 3 under MultiWorkerMirroredStrategy."""

from __future__ import annotations

from dae.compat.checks import _attr, _mark, _module, patched


def keras_multi_worker_fit() -> None:
    """Two fixes Keras 3 needs for model.fit under MultiWorkerMirroredStrategy (keras#20585,
    tensorflow#72388), to apply only in a multi-worker process:
    - fit's symbolic build (TensorFlowTrainer._maybe_symbolic_build) reduces a whole (x, y)
      batch across workers to learn its shapes, which CollectiveAllReduceStrategy.reduce
      cannot do for a nested structure: take this worker's own batch instead (same shapes,
      no collective);
    - each step's scalar metrics are reduced (trainer.reduce_per_replica) with axis=0
      ("Invalid reduction dimension 0 for input with 0 dimensions"): average them across
      workers with axis=None.
    The epoch's logs (what EarlyStopping and ModelCheckpoint read) come from the metrics'
    synced variables, so every worker sees the same values and decides alike. Elsewhere
    both wrappers defer to Keras' own code."""
    lib, patch = "keras", "keras_multi_worker_fit"
    trainer = _module(lib, patch, "keras.src.backend.tensorflow.trainer")
    cls = _attr(lib, patch, trainer, "TensorFlowTrainer")
    build = _attr(lib, patch, cls, "_maybe_symbolic_build", ("self", "iterator", "data_batch"))
    reduce = _attr(lib, patch, trainer, "reduce_per_replica", ("values", "strategy", "reduction"))
    multi_worker = _attr(lib, patch, trainer, "_collective_all_reduce_multi_worker", ("strategy",))
    if patched(build) and patched(reduce):
        return
    import keras
    import tensorflow as tf

    tree = keras.tree  # the same functions as keras.src.tree

    def local(strategy, v):
        if isinstance(v, tf.distribute.DistributedValues):
            return strategy.experimental_local_results(v)[0]
        return v

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        strategy = self.distribute_strategy
        if iterator is not None and multi_worker(strategy):
            for _, _, it in iterator:
                data_batch = tree.map_structure(lambda v: local(strategy, v), next(it))
                break
            iterator = None
        return build(self, iterator=iterator, data_batch=data_batch)

    def reduce_per_replica(values, strategy, reduction):
        if reduction == "auto" and multi_worker(strategy):
            return tree.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), values)
        return reduce(values, strategy, reduction)

    if not patched(build):
        cls._maybe_symbolic_build = _mark(_maybe_symbolic_build, patch)
    if not patched(reduce):
        trainer.reduce_per_replica = _mark(reduce_per_replica, patch)
