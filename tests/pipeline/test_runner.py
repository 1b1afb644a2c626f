"""The runner's contract, with stand-in components (the real ones run in test_end_to_end)."""

import json
from types import SimpleNamespace

import pytest

from components.artifacts import StageError
from pipeline import runner
from pipeline.config import Config
from pipeline.dag import DAG, Node


def component(outputs=("out",), fail=None, resumable=()):
    def run(ctx):
        for path in ctx.outputs.values():
            (path / "data.txt").write_text(ctx.run_id)
        if fail:
            raise fail
        return {"seen": sorted(ctx.inputs)}

    return SimpleNamespace(INPUTS=(), OUTPUTS=outputs, RESUMABLE=resumable, run=run)


def test_dag_bindings_match_what_components_declare():
    produced = set()
    for n in DAG:
        assert set(n.inputs) == set(n.component.INPUTS), n.name
        for ref in n.inputs.values():
            assert ref in produced, f"{n.name} reads {ref} before it is produced"
        produced |= {f"{n.name}.{o}" for o in n.component.OUTPUTS}


def test_execute_marks_success_and_wires_inputs(tmp_path):
    runner.execute(Node("a", component()), Config(), tmp_path, tmp_path / "serving")
    result = runner.execute(
        Node("b", component(), {"x": "a.out"}), Config(), tmp_path, tmp_path / "serving"
    )
    assert result["seen"] == ["x"] and (tmp_path / "b" / runner.SUCCESS).exists()
    assert json.loads((tmp_path / "b" / "stage.json").read_text())["summary"] == {"seen": ["x"]}


def test_failed_stage_leaves_no_success_marker_and_blocks_downstream(tmp_path):
    with pytest.raises(RuntimeError):
        runner.execute(
            Node("a", component(fail=RuntimeError("boom"))), Config(), tmp_path, tmp_path
        )
    assert (tmp_path / "a" / "out" / "data.txt").exists()
    assert not (tmp_path / "a" / runner.SUCCESS).exists()
    with pytest.raises(StageError, match="needs 'a', which has not succeeded"):
        runner.execute(Node("b", component(), {"x": "a.out"}), Config(), tmp_path, tmp_path)


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
    dag = (Node("a", component()), Node("b", component(fail=error), {"x": "a.out"}))
    monkeypatch.setattr(runner, "DAG", dag)
    monkeypatch.setattr(runner, "STAGES", ("a", "b"))
    with pytest.raises(type(error)):
        runner.run_pipeline(Config(), tmp_path, run_id="r1")
    metrics = json.loads((tmp_path / "runs" / "r1" / "metrics.json").read_text())
    assert metrics["status"] == "failed" and metrics["error"] == f"b: {error.args[0]}"
    assert list(metrics["stage_seconds"]) == ["a"] and metrics["pushed_version"] is None
    run = json.loads((tmp_path / "runs" / "r1" / "run.json").read_text())
    assert run["status"] == "failed" and run["finished"]
