"""`dae lineage` and `dae runs show` with a relative --root (the default `./dae-root`), from
the cwd of the run and from another one; records older runs wrote with relative paths."""

import json
from pathlib import Path

import pytest
from stand_ins import stand_in

from dae.artifacts import Artifact
from dae.cli import main
from dae.component import External, StageResult
from dae.pipeline import runner
from dae.pipeline.config import Config
from dae.pipeline.dag import Node
from dae.pipeline.metadata import MetadataStore, default_url


def _ingest(ctx):
    (ctx.outputs["examples"] / "data.txt").write_text("examples")


def _push(ctx):
    version = ctx.serving_dir / "denoiser" / "1"
    version.mkdir(parents=True)
    (version / "saved_model.pb").write_text("a model")
    return StageResult({"pushed_version": 1}, {"servable": External(Artifact, str(version))})


@pytest.fixture
def stand_in_dag(monkeypatch):
    dag = (
        Node("ingest", stand_in(_ingest, outputs=("examples",))),
        Node("push", stand_in(_push, ("examples",), ()), {"examples": "ingest.examples"}),
    )
    monkeypatch.setattr(runner, "DAG", dag)
    monkeypatch.setattr(runner, "STAGES", ("ingest", "push"))


def _lineage(root: str, capsys) -> dict:
    assert main(["lineage", "denoiser", "1", "--root", root, "--json"]) == 0, capsys.readouterr()
    return json.loads(capsys.readouterr().out)


def test_lineage_of_a_run_with_a_relative_root(tmp_path, monkeypatch, capsys, stand_in_dag):
    monkeypatch.chdir(tmp_path)
    runner.run_pipeline(Config(), Path("dae-root"), run_id="r1")
    capsys.readouterr()
    root = (tmp_path / "dae-root").resolve()
    info = _lineage("dae-root", capsys)
    assert info["run_id"] == "r1" and set(info["executions"]) == {"ingest", "push"}
    assert info["servable"] == str(root / "serving" / "denoiser" / "1")
    assert info["config"] == str(root / "runs" / "r1" / "config.yaml")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert _lineage("../dae-root", capsys)["executions"] == info["executions"]
    assert main(["runs", "show", "r1", "--root", "../dae-root"]) == 0
    shown = capsys.readouterr().out
    assert str(root / "runs" / "r1" / "ingest" / "examples") in shown


def test_lineage_finds_records_written_with_relative_paths(tmp_path, monkeypatch, capsys):
    """What a run with `--root dae-root` recorded before paths were recorded resolved."""
    root = tmp_path / "dae-root"
    root.mkdir()
    store = MetadataStore(default_url(root))
    run = store.context("run", "r0")
    examples = root / "runs" / "r0" / "ingest" / "examples"
    examples.mkdir(parents=True)
    (examples / "fingerprint.json").write_text('{"dataset": "mnist", "sha256": "abc"}')
    ingest = store.start_execution(run, "r0", "ingest", "k1", {}, "code", {})
    art = {"type": "Examples", "uri": "dae-root/runs/r0/ingest/examples", "fingerprint": "e"}
    ids = store.finish_execution(ingest, "succeeded", 1.0, {}, {"examples": art})
    push = store.start_execution(run, "r0", "push", "k2", {}, "code", ids)
    servable = {"type": "Servable", "uri": "dae-root/serving/denoiser/1", "fingerprint": "m"}
    store.finish_execution(push, "succeeded", 1.0, {}, {"servable": servable})
    store.update_context(run, status="succeeded", code_version="c0ffee")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    info = _lineage(str(root), capsys)
    assert info["run_id"] == "r0" and set(info["executions"]) == {"ingest", "push"}
    assert info["dataset"] == {"dataset": "mnist", "sha256": "abc"}
    assert _lineage("../dae-root", capsys)["code_version"] == "c0ffee"
