"""`dae stage` in a finished run: what it invalidates downstream (only what read an output
that changed), what it says, and what `dae runs show` then says. Stand-in components."""

import pytest
from stand_ins import stand_in

from dae.cli import main
from dae.files import SUCCESS
from dae.pipeline import runner
from dae.pipeline.config import Config
from dae.pipeline.dag import Node


def _writer(content: dict, name: str, outputs=("out",), inputs=()):
    """A stage that writes content[name.output] into each output (and fails on "fail")."""

    def run(ctx):
        for out, path in ctx.outputs.items():
            text = content.get(f"{name}.{out}", name)
            text = text() if callable(text) else text
            if text == "fail":
                raise RuntimeError(f"{name} failed on purpose")
            (path / "data.txt").write_text(text)

    return stand_in(run, inputs, outputs)


@pytest.fixture
def finished(tmp_path, monkeypatch):
    """A run r1 of a -> (b <- a.out, c <- a.side), d <- b.out; every stage succeeded.
    Returns (content, run folder): set content["a.side"] to change what a writes there."""
    content: dict[str, str] = {}
    dag = (
        Node("a", _writer(content, "a", ("out", "side"))),
        Node("b", _writer(content, "b", inputs=("x",)), {"x": "a.out"}),
        Node("c", _writer(content, "c", inputs=("x",)), {"x": "a.side"}),
        Node("d", _writer(content, "d", inputs=("x",)), {"x": "b.out"}),
    )
    monkeypatch.setattr(runner, "DAG", dag)
    monkeypatch.setattr(runner, "STAGES", tuple(n.name for n in dag))
    monkeypatch.setattr(runner, "node", lambda name: next(n for n in dag if n.name == name))
    runner.run_pipeline(Config(), tmp_path, run_id="r1")
    return content, tmp_path / "runs" / "r1"


def _succeeded(rdir):
    return sorted(p.parent.name for p in rdir.glob(f"*/{SUCCESS}"))


def _shown(root, capsys) -> dict[str, str]:
    """`dae runs show r1`: each stage's status in its latest execution."""
    assert main(["runs", "show", "r1", "--root", str(root)]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:]]
    return {row[0]: row[1] for row in rows if row and row[0] in {"a", "b", "c", "d"}}


def test_a_cache_hit_changes_nothing_downstream(finished, capsys):
    _, rdir = finished
    capsys.readouterr()
    assert main(["stage", "a", "--run", "r1", "--root", str(rdir.parents[1]), "--cache-only"]) == 0
    out = capsys.readouterr().out
    assert "a: cached" in out and "invalidated" not in out
    assert _succeeded(rdir) == ["a", "b", "c", "d"]


def test_a_rerun_with_the_same_output_changes_nothing_downstream(finished, capsys):
    _, rdir = finished
    runner.run_stage(Config(), rdir.parents[1], "r1", "a")
    assert _succeeded(rdir) == ["a", "b", "c", "d"]
    assert "invalidated" not in capsys.readouterr().out


def test_a_changed_output_invalidates_only_its_readers_and_says_so(finished, capsys):
    content, rdir = finished
    root = rdir.parents[1]
    content["a.side"] = "another side"
    capsys.readouterr()
    assert main(["stage", "a", "--run", "r1", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if "invalidated" in line] == [
        "[c] invalidated: its input a.side changed"
    ]
    assert _succeeded(rdir) == ["a", "b", "d"]
    assert _shown(root, capsys) == {
        "a": "succeeded",
        "b": "succeeded",
        "c": "invalidated",
        "d": "succeeded",
    }
    # c again: valid again, in the folders and in the store.
    runner.run_stage(Config(), root, "r1", "c")
    assert _succeeded(rdir) == ["a", "b", "c", "d"]
    assert _shown(root, capsys)["c"] == "succeeded"


def test_invalidation_follows_the_readers_of_invalidated_stages(finished, capsys):
    content, rdir = finished
    content["a.out"] = "another out"
    runner.run_stage(Config(), rdir.parents[1], "r1", "a")
    lines = [line for line in capsys.readouterr().out.splitlines() if "invalidated" in line]
    assert lines == [
        "[b] invalidated: its input a.out changed",
        "[d] invalidated: its input b.out is from an invalidated stage",
    ]
    assert _succeeded(rdir) == ["a", "c"]


def test_a_failed_rerun_invalidates_everything_downstream(finished, capsys):
    content, rdir = finished
    content["a.out"] = "fail"
    with pytest.raises(RuntimeError, match="a failed on purpose"):
        runner.run_stage(Config(), rdir.parents[1], "r1", "a")
    assert _succeeded(rdir) == []
    assert _shown(rdir.parents[1], capsys) == {
        "a": "failed",
        "b": "invalidated",
        "c": "invalidated",
        "d": "invalidated",
    }


def test_while_a_stage_reruns_nothing_downstream_claims_to_be_valid(finished, capsys):
    """A process killed half-way (SIGKILL, OOM, a Pod evicted) runs no cleanup: while the
    stage rewrites its outputs, what reads them must already have lost its SUCCESS; an
    unchanged output gives it back."""
    content, rdir = finished
    during = []
    content["a.out"] = lambda: during.append(_succeeded(rdir)) or "a"
    runner.run_stage(Config(), rdir.parents[1], "r1", "a")
    assert during == [[]]
    assert _succeeded(rdir) == ["a", "b", "c", "d"]
    assert "invalidated" not in capsys.readouterr().out
