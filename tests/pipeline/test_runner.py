"""The runner's contract, with stand-in components (the real ones run in test_end_to_end)."""

import json

import pytest
from stand_ins import stand_in

from dae.component import StageError
from dae.files import SUCCESS
from dae.pipeline import invalidation, runner
from dae.pipeline.config import Config
from dae.pipeline.dag import DAG, Node


def component(outputs=("out",), fail=None, resumable=(), inputs=()):
    def run(ctx):
        for path in ctx.outputs.values():
            (path / "data.txt").write_text(ctx.run_id)
        if fail:
            raise fail
        return {"seen": sorted(ctx.inputs)}

    return stand_in(run, inputs, outputs, resumable=resumable)


def test_dag_bindings_match_what_components_declare():
    produced: dict[str, type] = {}
    for n in DAG:
        spec = n.component.SPEC
        assert set(n.inputs) == set(spec.inputs), n.name
        for name, ref in n.inputs.items():
            assert ref in produced, f"{n.name} reads {ref} before it is produced"
            assert produced[ref] is spec.inputs[name], f"{n.name}.{name}: {ref} is another type"
        produced |= {f"{n.name}.{o}": kind for o, kind in spec.outputs.items()}


def test_execute_marks_success_and_wires_inputs(tmp_path):
    runner.execute(Node("a", component()), Config(), tmp_path, tmp_path / "serving")
    result = runner.execute(
        Node("b", component(inputs=("x",)), {"x": "a.out"}),
        Config(),
        tmp_path,
        tmp_path / "serving",
    )
    assert result.metrics["seen"] == ["x"] and (tmp_path / "b" / SUCCESS).exists()
    assert json.loads((tmp_path / "b" / "stage.json").read_text())["summary"] == {"seen": ["x"]}


def test_failed_stage_leaves_no_success_marker_and_blocks_downstream(tmp_path):
    with pytest.raises(RuntimeError):
        runner.execute(
            Node("a", component(fail=RuntimeError("boom"))), Config(), tmp_path, tmp_path
        )
    assert (tmp_path / "a" / "out" / "data.txt").exists()
    assert not (tmp_path / "a" / SUCCESS).exists()
    with pytest.raises(StageError, match="needs 'a', which has not succeeded"):
        runner.execute(
            Node("b", component(inputs=("x",)), {"x": "a.out"}), Config(), tmp_path, tmp_path
        )


def test_rerun_clears_outputs_but_keeps_resumable_ones(tmp_path):
    node = Node("t", component(outputs=("best", "trials"), resumable=("trials",)))
    runner.execute(node, Config(), tmp_path, tmp_path)
    (tmp_path / "t" / "best" / "stale").write_text("old")
    (tmp_path / "t" / "trials" / "trial_0").write_text("finished trial")
    runner.execute(node, Config(), tmp_path, tmp_path)
    assert not (tmp_path / "t" / "best" / "stale").exists()
    assert (tmp_path / "t" / "trials" / "trial_0").exists()


@pytest.mark.parametrize("error", [StageError("bad data"), KeyboardInterrupt("SIGTERM")])
def test_a_failed_run_is_recorded_with_its_error(tmp_path, monkeypatch, error):
    dag = (Node("a", component()), Node("b", component(fail=error, inputs=("x",)), {"x": "a.out"}))
    monkeypatch.setattr(runner, "DAG", dag)
    monkeypatch.setattr(runner, "STAGES", ("a", "b"))
    with pytest.raises(type(error)):
        runner.run_pipeline(Config(), tmp_path, run_id="r1")
    metrics = json.loads((tmp_path / "runs" / "r1" / "metrics.json").read_text())
    assert metrics["status"] == "failed" and metrics["error"] == f"b: {error.args[0]}"
    assert list(metrics["stage_seconds"]) == ["a"] and metrics["pushed_version"] is None
    run = json.loads((tmp_path / "runs" / "r1" / "run.json").read_text())
    assert run["status"] == "failed" and run["finished"]


def test_rerunning_a_stage_invalidates_what_depends_on_it(tmp_path, monkeypatch):
    changed = {"transform.transformed_examples", "transform.transform_graph"}
    assert invalidation.invalidated_by(changed) == {
        "tune": "its input transform.transformed_examples changed",
        "train": "its input transform.transformed_examples changed",
        "resolver": "its input train.model is from an invalidated stage",
        "evaluate": "its input transform.transformed_examples changed",
        "push": "its input train.model is from an invalidated stage",
        "report": "its input transform.transformed_examples changed",
    }
    assert list(invalidation.invalidated_by({"evaluate.blessing"})) == ["push", "report"]
    assert invalidation.invalidated_by({"push.pushed_model"}) == {}
    # A stage with no record of its outputs in the run: everything after it is stale.
    rdir = tmp_path / "runs" / "r1"
    for stage in ("ingest", "validate", "transform", "tune", "train", "evaluate", "push"):
        (rdir / stage).mkdir(parents=True)
        (rdir / stage / SUCCESS).touch()
    validate = Node(
        "validate", component(outputs=("statistics",), inputs=("x",)), {"x": "ingest.examples"}
    )
    monkeypatch.setattr(runner, "node", lambda name: validate)
    runner.run_stage(Config(), tmp_path, "r1", "validate", ["seed=1"])
    assert sorted(p.parent.name for p in rdir.glob(f"*/{SUCCESS}")) == ["ingest", "validate"]
    record = json.loads((rdir / "validate" / "stage.json").read_text())
    assert record["overrides"] == ["seed=1"] and record["rerun"]


def test_a_signal_during_an_atomic_stage_waits_for_it(tmp_path, monkeypatch):
    import os
    import signal

    def run(ctx):
        os.kill(os.getpid(), signal.SIGTERM)  # arrives mid-push
        (ctx.outputs["out"] / "version").write_text("complete")
        return {"pushed_version": 7}

    atomic = stand_in(run, atomic=True)
    monkeypatch.setattr(runner, "DAG", (Node("push", atomic),))
    monkeypatch.setattr(runner, "STAGES", ("push",))
    old = signal.signal(signal.SIGTERM, lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        with pytest.raises(KeyboardInterrupt):
            runner.run_pipeline(Config(), tmp_path, run_id="r1")
    finally:
        signal.signal(signal.SIGTERM, old)
    rdir = tmp_path / "runs" / "r1"
    assert (rdir / "push" / "out" / "version").read_text() == "complete"
    assert (rdir / "push" / SUCCESS).exists()
    metrics = json.loads((rdir / "metrics.json").read_text())
    assert metrics["status"] == "failed" and metrics["pushed_version"] == 7
