"""dae.compat: each patch applies, does what it says, is idempotent, and fails loudly, naming
the library's installed version, once what it patches or uses is gone. Patched library
state is put back after each test (monkeypatch), so other tests see Keras as they would."""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest

from dae import compat
from dae.compat import MARK, CompatError


def gone(lib: str, dist: str, what: str) -> str:
    """The error message's start (a pattern), the version read apart from dae.compat."""
    return re.escape(f"{lib} {importlib.metadata.version(dist)}: {what}")


def test_compat_imports_only_the_standard_library():
    """It sits at the bottom layer: libraries are imported lazily, dae's layers never."""
    code = "import sys, dae.compat; print(*sorted(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = {m for m in out.stdout.split() if not m.startswith(("_", "dae.compat"))}
    outside = {m for m in loaded if m.split(".")[0] not in sys.stdlib_module_names}
    assert outside == {"dae"}, sorted(outside)


# ---- Keras Tuner: atomic state files ------------------------------------------------------


@pytest.fixture
def tuner_utils(monkeypatch):
    """keras_tuner.src.utils with its own save_json back in place, restored afterwards."""
    from keras_tuner.src import utils

    def save_json(path, obj):  # stands in for Keras Tuner's: the patch must replace it
        raise AssertionError("the unpatched save_json was called")

    monkeypatch.setattr(utils, "save_json", save_json)
    return utils


def test_atomic_tuner_state_writes_beside_and_renames(tuner_utils, tmp_path, monkeypatch):
    import tensorflow as tf

    compat.atomic_tuner_state()
    save_json = tuner_utils.save_json
    assert getattr(save_json, MARK) == "atomic_tuner_state"
    compat.atomic_tuner_state()
    assert tuner_utils.save_json is save_json  # idempotent

    renames, rename = [], tf.io.gfile.rename
    monkeypatch.setattr(tf.io.gfile, "rename", lambda *a, **k: (renames.append(a), rename(*a, **k)))
    path = str(tmp_path / "oracle.json")
    assert save_json(path, {"trials": [1, 2]}) == '{"trials": [1, 2]}'
    assert renames == [(f"{path}.tmp-{os.getpid()}", path)]
    assert (tmp_path / "oracle.json").read_text() == '{"trials": [1, 2]}'

    def killed_midway(self, data):
        raise KeyboardInterrupt

    monkeypatch.setattr(tf.io.gfile.GFile, "write", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        save_json(path, {"trials": []})
    assert (tmp_path / "oracle.json").read_text() == '{"trials": [1, 2]}'  # the old file, whole
    assert [p.name for p in tmp_path.iterdir()] == ["oracle.json"]  # no temporary left


def test_atomic_tuner_state_fails_loudly_without_save_json(tuner_utils, monkeypatch):
    monkeypatch.delattr(tuner_utils, "save_json")
    message = gone("keras_tuner", "keras-tuner", "keras_tuner.src.utils.save_json is gone")
    with pytest.raises(CompatError, match=message) as e:
        compat.atomic_tuner_state()
    assert "dae.compat.atomic_tuner_state needs updating" in str(e.value)


def test_atomic_tuner_state_fails_loudly_on_a_new_signature(tuner_utils, monkeypatch):
    monkeypatch.setattr(tuner_utils, "save_json", lambda path, obj, indent: None)
    with pytest.raises(CompatError, match=r"takes \(path, obj, indent\), not \(path, obj\)"):
        compat.atomic_tuner_state()


def test_atomic_tuner_state_fails_loudly_if_a_writer_bypasses_utils(tuner_utils, monkeypatch):
    from keras_tuner.src.engine import stateful

    monkeypatch.setattr(stateful, "save_json", tuner_utils.save_json, raising=False)
    with pytest.raises(CompatError, match="engine.stateful no longer writes through"):
        compat.atomic_tuner_state()


# ---- Keras Tuner: a worker's OracleClient ------------------------------------------------


@pytest.fixture
def client():
    """An OracleClient without its gRPC channel, whose calls to the chief are stand-ins."""
    from keras_tuner.src.distribute.oracle_client import OracleClient

    client = object.__new__(OracleClient)
    client.update_trial = lambda trial_id, metrics, step=0: ("sent", trial_id, step)
    client.end_trial = lambda trial: ("ended", trial.trial_id)
    return client


def test_record_oracle_client_trials_keeps_what_a_worker_reported(client):
    trials = compat.record_oracle_client_trials(client, "val_loss")
    assert getattr(client.update_trial, MARK) == getattr(client.end_trial, MARK)
    assert client.update_trial("7", {"val_loss": 0.5, "loss": 0.4}, step=3) == ("sent", "7", 3)
    trial = SimpleNamespace(
        trial_id="7", status="COMPLETED", hyperparameters=SimpleNamespace(values={"units": 8})
    )
    assert client.end_trial(trial) == ("ended", "7")
    assert trials == {"7": {"values": {"units": 8}, "score": 0.5, "status": "COMPLETED"}}
    update = client.update_trial
    assert compat.record_oracle_client_trials(client, "val_loss") is trials  # idempotent
    assert client.update_trial is update


@pytest.mark.parametrize("method", ["update_trial", "end_trial"])
def test_record_oracle_client_trials_fails_loudly_without_a_method(client, monkeypatch, method):
    from keras_tuner.src.distribute.oracle_client import OracleClient

    monkeypatch.delattr(OracleClient, method)
    what = f"keras_tuner.src.distribute.oracle_client.OracleClient.{method} is gone"
    with pytest.raises(CompatError, match=gone("keras_tuner", "keras-tuner", what)):
        compat.record_oracle_client_trials(client, "val_loss")


def test_record_oracle_client_trials_fails_loudly_on_another_oracle():
    with pytest.raises(CompatError, match="is not a keras_tuner OracleClient"):
        compat.record_oracle_client_trials(SimpleNamespace(), "val_loss")


# ---- Keras: fit under MultiWorkerMirroredStrategy ----------------------------------------


class Strategy:
    """Stands in for a MultiWorkerMirroredStrategy (or, multi=False, any other)."""

    def __init__(self, multi: bool):
        self.multi, self.reduced = multi, []

    def experimental_local_results(self, v):
        return v.parts

    def reduce(self, op, v, axis):
        self.reduced.append((op, v, axis))
        return v


@pytest.fixture
def trainer(monkeypatch):
    """Keras' TF trainer with stand-ins for what the patch wraps; the real ones come back
    after the test, whatever the patch installed."""
    from keras.src.backend.tensorflow import trainer

    calls = []
    monkeypatch.setattr(
        trainer, "_collective_all_reduce_multi_worker", lambda strategy: strategy.multi
    )
    monkeypatch.setattr(
        trainer.TensorFlowTrainer,
        "_maybe_symbolic_build",
        lambda self, iterator=None, data_batch=None: calls.append(("build", iterator, data_batch)),
    )
    monkeypatch.setattr(
        trainer,
        "reduce_per_replica",
        lambda values, strategy, reduction: calls.append(("reduce", values, reduction)),
    )
    return trainer, calls


def test_keras_multi_worker_fit_builds_from_the_local_batch_and_averages_metrics(trainer):
    import tensorflow as tf

    trainer, calls = trainer
    compat.keras_multi_worker_fit()
    build, reduce = trainer.TensorFlowTrainer._maybe_symbolic_build, trainer.reduce_per_replica
    assert getattr(build, MARK) == getattr(reduce, MARK) == "keras_multi_worker_fit"
    compat.keras_multi_worker_fit()
    assert trainer.TensorFlowTrainer._maybe_symbolic_build is build  # idempotent
    assert trainer.reduce_per_replica is reduce

    class PerWorker(tf.distribute.DistributedValues):
        def __init__(self, *parts):
            self.parts = parts

    multi, single = Strategy(multi=True), Strategy(multi=False)
    batch = (PerWorker("x0", "x1"), PerWorker("y0", "y1"))
    build(SimpleNamespace(distribute_strategy=multi), iterator=[(0, 0, iter([batch]))])
    assert calls.pop() == ("build", None, ("x0", "y0"))  # this worker's own batch, no collective
    iterator = [(0, 0, iter([batch]))]
    build(SimpleNamespace(distribute_strategy=single), iterator=iterator)
    assert calls.pop() == ("build", iterator, None)  # Keras' own code

    assert reduce({"loss": 1.0, "mse": 2.0}, multi, "auto") == {"loss": 1.0, "mse": 2.0}
    assert multi.reduced == [("MEAN", 1.0, None), ("MEAN", 2.0, None)]  # axis=None, not 0
    reduce({"loss": 1.0}, single, "auto")
    reduce({"loss": 1.0}, multi, "sum")
    assert calls == [("reduce", {"loss": 1.0}, "auto"), ("reduce", {"loss": 1.0}, "sum")]


@pytest.mark.parametrize(
    "owner, name",
    [
        ("TensorFlowTrainer", "_maybe_symbolic_build"),
        (None, "reduce_per_replica"),
        (None, "_collective_all_reduce_multi_worker"),
    ],
)
def test_keras_multi_worker_fit_fails_loudly_without_what_it_patches(
    trainer, monkeypatch, owner, name
):
    trainer, _ = trainer
    monkeypatch.delattr(getattr(trainer, owner) if owner else trainer, name)
    what = f"keras.src.backend.tensorflow.trainer.{f'{owner}.' if owner else ''}{name} is gone"
    with pytest.raises(CompatError, match=gone("keras", "keras", what)):
        compat.keras_multi_worker_fit()


def test_keras_multi_worker_fit_fails_loudly_on_a_new_signature(trainer, monkeypatch):
    trainer, _ = trainer
    monkeypatch.setattr(trainer, "reduce_per_replica", lambda values, strategy: values)
    with pytest.raises(CompatError, match=r"reduce_per_replica takes \(values, strategy\)"):
        compat.keras_multi_worker_fit()


# ---- Apache Beam: the in-process FnApiRunner ---------------------------------------------


def test_beam_fn_api_runner_runs_a_pipeline_with_its_options():
    from dae.beam import beam_options, import_beam, pipeline_runner

    beam = import_beam()
    from apache_beam.runners.portability.fn_api_runner.fn_runner import FnApiRunner
    from apache_beam.testing.util import assert_that, equal_to

    options = beam_options(None, ["--direct_num_workers=1"])
    runner = compat.beam_fn_api_runner(options)
    assert isinstance(runner, FnApiRunner) and isinstance(pipeline_runner(options), FnApiRunner)
    encoded = runner._provision_info.provision_info.pipeline_options
    assert encoded["beam:option:direct_num_workers:v1"] == "1"
    with beam.Pipeline(runner=runner, options=options) as p:
        assert_that(p | beam.Create([1, 2, 3]) | beam.Map(lambda x: x * 2), equal_to([2, 4, 6]))


@pytest.mark.parametrize(
    "module, owner, name",
    [
        ("apache_beam.runners.portability.fn_api_runner.fn_runner", None, "FnApiRunner"),
        ("apache_beam.runners.portability.fn_api_runner.fn_runner", None, "ExtendedProvisionInfo"),
        (
            "apache_beam.runners.portability.portable_runner",
            "JobServiceHandle",
            "encode_pipeline_options",
        ),
        ("apache_beam.portability.api", None, "beam_provision_api_pb2"),
    ],
)
def test_beam_fn_api_runner_fails_loudly_without_what_it_uses(monkeypatch, module, owner, name):
    import importlib

    from apache_beam.options.pipeline_options import PipelineOptions

    target = importlib.import_module(module)
    monkeypatch.delattr(getattr(target, owner) if owner else target, name)
    what = f"{module}.{f'{owner}.' if owner else ''}{name} is gone"
    with pytest.raises(CompatError, match=gone("apache_beam", "apache-beam", what)):
        compat.beam_fn_api_runner(PipelineOptions([]))


def test_a_missing_module_is_named_too(monkeypatch):
    from apache_beam.options.pipeline_options import PipelineOptions

    monkeypatch.setitem(sys.modules, "apache_beam.runners.portability.portable_runner", None)
    what = "module apache_beam.runners.portability.portable_runner is gone"
    with pytest.raises(CompatError, match=gone("apache_beam", "apache-beam", what)):
        compat.beam_fn_api_runner(PipelineOptions([]))


# ---- uvicorn: no patch needed ------------------------------------------------------------


def test_uvicorn_takes_signals_without_hiding_them_from_asyncio():
    """Why serving.model_server.server no longer patches uvicorn: the hook it disabled
    (Server.install_signal_handlers) is gone; its successor, capture_signals, sets its
    handlers with signal.signal, and the signal still reaches asyncio's handlers, so
    `dae serve`'s own SIGTERM handler stops gRPC as before."""
    import uvicorn

    assert not hasattr(uvicorn.Server, "install_signal_handlers")
    script = textwrap.dedent("""
        import asyncio, os, signal, uvicorn

        async def main():
            stop, loop = asyncio.Event(), asyncio.get_running_loop()
            loop.add_signal_handler(signal.SIGTERM, stop.set)
            server = uvicorn.Server(uvicorn.Config(None))
            with server.capture_signals():
                os.kill(os.getpid(), signal.SIGTERM)
                await asyncio.wait_for(stop.wait(), 5)
                print("asyncio", stop.is_set(), "uvicorn", server.should_exit)

        asyncio.run(main())
    """)
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["asyncio", "True", "uvicorn", "True"]


# ---- Keras Tuner: the chief's oracle server ------------------------------------------------


@pytest.fixture
def chief(monkeypatch, tmp_path):
    """oracle_chief (its exit_chief put back after the test) and a real one-trial oracle."""
    import keras_tuner as kt
    from keras_tuner.src.distribute import oracle_chief

    monkeypatch.setattr(oracle_chief, "exit_chief", oracle_chief.exit_chief)
    hp = kt.HyperParameters()
    hp.Int("units", 1, 4)
    oracle = kt.oracles.RandomSearchOracle(objective="val_loss", max_trials=1, hyperparameters=hp)
    oracle._set_project_dir(str(tmp_path), "search")
    return oracle_chief, oracle


def test_chief_waits_for_workers_keeps_serving_until_each_was_told(chief):
    oracle_chief, oracle = chief
    told = compat.chief_waits_for_workers(oracle, 2)
    trial = oracle.create_trial("tuner0")
    assert trial.status == "RUNNING" and not oracle_chief.exit_chief(oracle)
    oracle.end_trial(trial)
    assert oracle.create_trial("tuner0").status == "STOPPED"  # the search is over
    # Keras Tuner alone would exit now: nobody it has heard of is busy.
    assert not oracle.ongoing_trials and not oracle.tuner_ids
    assert told == {"tuner0"} and not oracle_chief.exit_chief(oracle)
    assert oracle.create_trial("tuner1").status == "STOPPED"  # the late worker is answered
    assert told == {"tuner0", "tuner1"} and oracle_chief.exit_chief(oracle)
    assert compat.chief_waits_for_workers(oracle, 2) is told  # idempotent
    assert getattr(oracle_chief.exit_chief, MARK) == "chief_waits_for_workers"


def test_chief_waits_for_workers_leaves_other_oracles_to_keras_tuner(chief):
    oracle_chief, oracle = chief
    compat.chief_waits_for_workers(oracle, 2)
    import keras_tuner as kt

    other = kt.oracles.RandomSearchOracle(objective="val_loss", max_trials=1)
    assert oracle_chief.exit_chief(other)  # not wrapped: Keras Tuner's rule alone


def test_chief_waits_for_workers_fails_loudly_if_start_server_stops_asking(chief, monkeypatch):
    oracle_chief, oracle = chief

    def start_server(oracle):  # a rewrite that decides on its own
        return oracle

    monkeypatch.setattr(oracle_chief, "start_server", start_server)
    with pytest.raises(CompatError, match=r"keras_tuner \S+: .*no longer calls exit_chief"):
        compat.chief_waits_for_workers(oracle, 2)


def test_hyperband_trials_counts_every_round_of_every_bracket():
    import keras_tuner as kt

    def oracle(max_epochs, factor, iterations=1):
        return kt.oracles.HyperbandOracle(
            objective="val_loss",
            max_epochs=max_epochs,
            factor=factor,
            hyperband_iterations=iterations,
        )

    # max_epochs 3, factor 3: bracket 0 runs 2 trials; bracket 1 runs 3, then 1 of them on.
    assert compat.hyperband_trials(oracle(3, 3)) == 2 + 3 + 1
    assert compat.hyperband_trials(oracle(3, 3, iterations=2)) == 12
    assert compat.hyperband_trials(oracle(10, 3)) == 30


def test_hyperband_trials_fails_loudly_without_the_schedule(monkeypatch):
    from keras_tuner.src.tuners import hyperband

    monkeypatch.delattr(hyperband.HyperbandOracle, "_get_size")
    with pytest.raises(CompatError, match=r"keras_tuner \S+: .*_get_size is gone"):
        compat.hyperband_trials(SimpleNamespace(hyperband_iterations=1))


def test_tf_gradient_registry_is_the_one_models_register_into(monkeypatch):
    from tensorflow.python.framework import ops

    assert compat.tf_gradient_registry() is ops._gradient_registry._registry
    monkeypatch.delattr(ops, "_gradient_registry")
    with pytest.raises(CompatError, match=r"tensorflow \S+: .*_gradient_registry is gone"):
        compat.tf_gradient_registry()


def test_tf_session_run_unchecked_feeds_any_shape_the_graph_takes(monkeypatch):
    import numpy as np
    import tensorflow as tf
    from tensorflow.python.client import session as client

    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 1])
        y = x * 0.5 + 2.0
    with tf.compat.v1.Session(graph=graph) as sess:
        feeds = {x: np.array([2.0, 3.0], np.float32)}
        (out,) = compat.tf_session_run_unchecked(sess, feeds, [y])
        assert out.tolist() == [3.0, 3.5]
        monkeypatch.delattr(client.BaseSession, "_call_tf_sessionrun")
        with pytest.raises(CompatError, match=r"_call_tf_sessionrun is gone"):
            compat.tf_session_run_unchecked(sess, feeds, [y])


def _register_gradient():
    """A gradient registered under a fresh name, as tf.saved_model.load registers a
    model's custom gradients; returns the name."""
    from tensorflow.python.framework import ops
    from tensorflow.python.ops import custom_gradient

    name = custom_gradient.generate_name()
    ops.RegisterGradient(name)(lambda op, grad: grad)
    return name


def test_tf_gradients_registered_are_this_threads_own():
    import threading

    other, registered = [], threading.Event()

    def elsewhere():  # registers while the main thread is inside the block
        other.append(_register_gradient())
        registered.set()

    with compat.tf_gradients_registered() as names:
        mine = _register_gradient()
        thread = threading.Thread(target=elsewhere)
        thread.start()
        registered.wait()
        thread.join()
        with compat.tf_gradients_registered() as inner:  # nested: both see it
            nested = _register_gradient()
    assert names == {mine, nested} and inner == {nested}
    assert {mine, nested, *other} <= set(compat.tf_gradient_registry())
    from tensorflow.python.framework import registry

    installed = registry.Registry.register
    with compat.tf_gradients_registered():  # the patch is installed once
        pass
    assert registry.Registry.register is installed and compat.patched(installed)
    compat.tf_forget_gradients({mine, nested, *other})
    assert not {mine, nested, *other} & set(compat.tf_gradient_registry())


def test_tf_gradients_registered_checks_what_it_patches(monkeypatch):
    from tensorflow.python.framework import ops, registry

    monkeypatch.setattr(ops.RegisterGradient, "__call__", lambda self, f: f)
    gone = pytest.raises(CompatError, match=r"RegisterGradient no longer registers")
    with gone, compat.tf_gradients_registered():
        pass
    monkeypatch.undo()
    monkeypatch.setattr(registry.Registry, "register", lambda self, candidate: None)
    changed = pytest.raises(CompatError, match=r"Registry.register takes \(self, candidate\)")
    with changed, compat.tf_gradients_registered():
        pass


# ---- NumPy -------------------------------------------------------------------------------


def test_numpy_array_reconstructor_is_what_array_pickles_name(monkeypatch):
    import pickle
    import pickletools

    import numpy as np

    named = [
        arg
        for op, arg, _ in pickletools.genops(pickle.dumps(np.arange(3), protocol=2))
        if op.name == "GLOBAL"
    ]
    assert "numpy._core.multiarray _reconstruct" in named
    from numpy._core import multiarray

    assert compat.numpy_array_reconstructor() is multiarray._reconstruct
    monkeypatch.delattr(multiarray, "_reconstruct")
    with pytest.raises(CompatError, match=r"numpy \S+: .*multiarray._reconstruct is gone"):
        compat.numpy_array_reconstructor()


def test_bm3d_volume_profile_is_the_profile_bm3d_runs_with(monkeypatch):
    bm3d = pytest.importorskip("bm3d")  # a bench-only dependency (requirements-dev.lock)
    import bm4d

    profile = bm3d.BM3DProfile()
    profile.num_threads = 1
    volume = compat.bm3d_volume_profile(profile)
    assert isinstance(volume, bm4d.BM4DProfile) and volume.num_threads == 1
    monkeypatch.delattr(bm3d, "_convert_profile")
    with pytest.raises(CompatError, match=r"bm3d \S+: bm3d._convert_profile is gone"):
        compat.bm3d_volume_profile(profile)
