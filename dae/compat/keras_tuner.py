"""Keras Tuner: atomic state files, a distributed worker's record of its trials, a chief
that waits for its workers, Hyperband's trial count."""

from __future__ import annotations

from typing import Any

from dae.compat.checks import _attr, _fail, _mark, _module, patched

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
