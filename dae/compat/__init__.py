"""Every patch of (and reach into) a library's private internals, in one place.

Each function says which upstream behaviour it works around, first checks that what it
patches or uses still exists (a module, an attribute, a method defined on that very class,
a signature where the patch depends on it) and otherwise raises CompatError naming the
library and its installed version: an upgrade breaks here, loudly, instead of running
silently unpatched. A patch may be applied any number of times; what it installs carries
the MARK attribute. Libraries are imported inside the functions: this module imports only
the standard library at its top, and nothing of dae's layers above it.

Gone from here: serving.server used to disable uvicorn's `Server.install_signal_handlers`.
uvicorn replaced that hook by `Server.capture_signals` (Kludex/uvicorn#1600), so on 0.54
the assignment did nothing and was removed; asyncio's own handlers still see the signals.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
from typing import Any

MARK = "__dae_compat__"  # on every function a patch installs: the patch's name
DISTRIBUTIONS = {
    "tensorflow": "tensorflow",
    "keras": "keras",
    "keras_tuner": "keras-tuner",
    "apache_beam": "apache-beam",
}


class CompatError(RuntimeError):
    """A library no longer has what a dae.compat patch patches or uses."""


def version(lib: str) -> str:
    """The installed version of `lib` (an import name), for the error messages."""
    try:
        return importlib.metadata.version(DISTRIBUTIONS.get(lib, lib))
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


def _fail(lib: str, patch: str, what: str, problem: str = "is gone"):
    raise CompatError(f"{lib} {version(lib)}: {what} {problem}; dae.compat.{patch} needs updating")


def _module(lib: str, patch: str, name: str):
    try:
        return importlib.import_module(name)
    except ImportError:
        _fail(lib, patch, f"module {name}")


def _attr(lib: str, patch: str, owner, name: str, params: tuple[str, ...] | None = None):
    """owner.name; on a class it must be defined by that class itself (an inherited one is
    not what the patch was written against). With `params`: a callable taking exactly
    those, as the patch calls or replaces it."""
    if isinstance(owner, type):
        label, found = f"{owner.__module__}.{owner.__qualname__}.{name}", name in vars(owner)
    else:
        label, found = f"{owner.__name__}.{name}", hasattr(owner, name)
    if not found:
        _fail(lib, patch, label)
    value = getattr(owner, name)
    if params is not None:
        try:
            actual = tuple(inspect.signature(value).parameters)
        except (TypeError, ValueError):
            actual = ("?",)
        if actual != params:
            _fail(lib, patch, label, f"takes ({', '.join(actual)}), not ({', '.join(params)})")
    return value


def _mark(fn, patch: str):
    setattr(fn, MARK, patch)
    return fn


def patched(fn) -> bool:
    return getattr(fn, MARK, None) is not None


# ---- Keras Tuner ------------------------------------------------------------------------

_TUNER_STATE_WRITERS = ("keras_tuner.src.engine.stateful", "keras_tuner.src.engine.tuner")


def atomic_tuner_state() -> None:
    """Keras Tuner rewrites its state files (oracle.json, trial.json) in place: a search
    killed mid-write leaves an empty oracle.json that the resumed search cannot read. Its
    one writer, keras_tuner.src.utils.save_json, now writes beside the file and renames
    over it. Checked: save_json(path, obj) exists and the modules that write state still
    call it through keras_tuner.src.utils (so replacing it there reaches them)."""
    lib, patch = "keras_tuner", "atomic_tuner_state"
    utils = _module(lib, patch, "keras_tuner.src.utils")
    current = _attr(lib, patch, utils, "save_json", ("path", "obj"))
    for name in _TUNER_STATE_WRITERS:
        writer = _module(lib, patch, name)
        if getattr(writer, "utils", None) is not utils or "save_json" in vars(writer):
            _fail(lib, patch, name, "no longer writes through keras_tuner.src.utils.save_json")
    if patched(current):
        return
    import json
    import os

    import tensorflow as tf

    def save_json(path, obj):
        text = json.dumps(obj)
        tmp = f"{path}.tmp-{os.getpid()}"
        try:
            with tf.io.gfile.GFile(tmp, "w") as f:
                f.write(text)
            tf.io.gfile.rename(tmp, path, overwrite=True)
        except BaseException:
            if tf.io.gfile.exists(tmp):
                tf.io.gfile.remove(tmp)
            raise
        return text

    utils.save_json = _mark(save_json, patch)


def record_oracle_client_trials(client, objective: str) -> dict[str, dict[str, Any]]:
    """On a distributed worker, Keras Tuner's OracleClient sends each trial's metrics and
    its end to the chief and keeps nothing. Wrap this client's update_trial and end_trial
    (on the instance) to keep, for each trial it ran, {"values", "score", "status"}: the
    values as the model was built (a build can add some), the score its last report of
    `objective`. Filled in as the search goes: once a worker's search returns, the chief
    may be gone. Returns that dict (the same one again if this client is wrapped already)."""
    lib, patch = "keras_tuner", "record_oracle_client_trials"
    module = _module(lib, patch, "keras_tuner.src.distribute.oracle_client")
    cls = _attr(lib, patch, module, "OracleClient")
    _attr(lib, patch, cls, "update_trial", ("self", "trial_id", "metrics", "step"))
    _attr(lib, patch, cls, "end_trial", ("self", "trial"))
    if not isinstance(client, cls):
        _fail(
            lib,
            patch,
            f"a worker's oracle ({type(client).__name__})",
            "is not a keras_tuner OracleClient",
        )
    if patched(client.end_trial):
        return client.end_trial.trials
    scores, trials = {}, {}
    update, end = client.update_trial, client.end_trial

    def update_trial(trial_id, metrics, step=0):
        scores[trial_id] = metrics.get(objective)
        return update(trial_id, metrics, step=step)

    def end_trial(trial):
        values = dict(trial.hyperparameters.values)
        trials[trial.trial_id] = {
            "values": values,
            "score": scores.get(trial.trial_id),
            "status": trial.status,
        }
        return end(trial)

    end_trial.trials = trials
    client.update_trial, client.end_trial = _mark(update_trial, patch), _mark(end_trial, patch)
    return trials


def chief_waits_for_workers(oracle, workers: int) -> set[str]:
    """Keras Tuner's chief (oracle_chief.start_server) exits once the search is over and no
    tuner it has heard from is busy: a worker that starts late (its Pod still pending, its
    imports slow) then finds no oracle and waits for it for an hour (OracleClient's TIMEOUT).
    Wrap this oracle's create_trial (on the instance) to note each tuner told the search is
    over, and have exit_chief also wait until `workers` of them have been. Checked:
    exit_chief exists and start_server(oracle) still consults it by its module name.
    Returns the set of tuner ids told so far (the same one if this oracle is wrapped)."""
    lib, patch = "keras_tuner", "chief_waits_for_workers"
    chief = _module(lib, patch, "keras_tuner.src.distribute.oracle_chief")
    current = _attr(lib, patch, chief, "exit_chief")  # synchronized: (*args, **kwargs)
    start = _attr(lib, patch, chief, "start_server", ("oracle",))
    if "exit_chief" not in start.__code__.co_names:
        _fail(lib, patch, "oracle_chief.start_server", "no longer calls exit_chief")
    trial = _module(lib, patch, "keras_tuner.src.engine.trial")
    stopped_status = _attr(lib, patch, trial.TrialStatus, "STOPPED")
    if not patched(current):
        original = current

        def exit_chief(oracle):
            told = getattr(oracle.create_trial, "told", None)
            needed = getattr(oracle.create_trial, "workers", 0)
            return original(oracle) and (told is None or len(told) >= needed)

        chief.exit_chief = _mark(exit_chief, patch)
    if patched(oracle.create_trial):
        oracle.create_trial.workers = workers
        return oracle.create_trial.told
    create, told = oracle.create_trial, set()

    def create_trial(tuner_id):
        result = create(tuner_id)
        if result.status == stopped_status:
            told.add(tuner_id)
        return result

    create_trial.told, create_trial.workers = told, workers
    oracle.create_trial = _mark(create_trial, patch)
    return told


# ---- Keras 3 + MultiWorkerMirroredStrategy ------------------------------------------------


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


# ---- Apache Beam ---------------------------------------------------------------------------


def beam_fn_api_runner(options):
    """What Beam's DirectRunner runs a batch pipeline with, its in-process FnApiRunner, set
    up the way DirectRunner.run_pipeline does it (the pipeline options in its provision
    info), built from Beam's internals: in Beam 2.77 DirectRunner itself first tries the
    Prism runner, which downloads a binary from GitHub (offline: a failed attempt on every
    run, then the fallback). A new runner on every call; nothing is patched."""
    lib, patch = "apache_beam", "beam_fn_api_runner"
    fn_runner = _module(lib, patch, "apache_beam.runners.portability.fn_api_runner.fn_runner")
    runner_cls = _attr(lib, patch, fn_runner, "FnApiRunner")
    extended = _attr(lib, patch, fn_runner, "ExtendedProvisionInfo")
    portable = _module(lib, patch, "apache_beam.runners.portability.portable_runner")
    handle = _attr(lib, patch, portable, "JobServiceHandle")
    encode = _attr(lib, patch, handle, "encode_pipeline_options", ("all_options",))
    api = _module(lib, patch, "apache_beam.portability.api")  # its pb2 are attributes only
    provision = _attr(lib, patch, api, "beam_provision_api_pb2")
    info_cls = _attr(lib, patch, provision, "ProvisionInfo")
    for fn in (runner_cls, extended):
        if "provision_info" not in inspect.signature(fn).parameters:
            _fail(lib, patch, f"{fn.__module__}.{fn.__qualname__}", "takes no provision_info")
    if "pipeline_options" not in info_cls.DESCRIPTOR.fields_by_name:
        _fail(lib, patch, "ProvisionInfo.pipeline_options")
    info = info_cls(pipeline_options=encode(options.get_all_options()))
    return runner_cls(provision_info=extended(info))


def hyperband_trials(oracle) -> int | None:
    """How many trials a Hyperband search runs: each bracket's rounds' sizes, from the
    oracle's own schedule (private methods), times its iterations; None if unbounded."""
    lib, patch = "keras_tuner", "hyperband_trials"
    module = _module(lib, patch, "keras_tuner.src.tuners.hyperband")
    cls = _attr(lib, patch, module, "HyperbandOracle")
    brackets = _attr(lib, patch, cls, "_get_num_brackets", ("self",))
    rounds = _attr(lib, patch, cls, "_get_num_rounds", ("self", "bracket_num"))
    size = _attr(lib, patch, cls, "_get_size", ("self", "bracket_num", "round_num"))
    iterations = oracle.hyperband_iterations
    if iterations == float("inf"):
        return None
    per_iteration = sum(
        size(oracle, b, r) for b in range(brackets(oracle)) for r in range(rounds(oracle, b))
    )
    return int(per_iteration * iterations)


def tf_gradient_registry() -> dict:
    """TensorFlow's global gradient registry (name -> function), which tf.saved_model.load
    fills and nothing empties: a model server drops an unloaded version's entries."""
    lib, patch = "tensorflow", "tf_gradient_registry"
    ops = _module(lib, patch, "tensorflow.python.framework.ops")
    registry = getattr(_attr(lib, patch, ops, "_gradient_registry"), "_registry", None)
    if not isinstance(registry, dict):
        _fail(
            lib,
            patch,
            "tensorflow.python.framework.ops._gradient_registry._registry",
            "is not a dict",
        )
    return registry


def tf_session_run_unchecked(session, feeds: dict, fetches: list) -> list:
    """Run a TF1 session without Session.run's Python check of each fed value's shape
    against its placeholder: TF Serving (C++) feeds whatever the graph accepts, e.g. a [3]
    tensor into half_plus_two's [-1, 1] input. Feeds and fetches are TF_Outputs."""
    lib, patch = "tensorflow", "tf_session_run_unchecked"
    client = _module(lib, patch, "tensorflow.python.client.session")
    params = ("self", "options", "feed_dict", "fetch_list", "target_list", "run_metadata")
    run = _attr(lib, patch, client.BaseSession, "_call_tf_sessionrun", params)
    return run(session, None, feeds, fetches, [], None)
