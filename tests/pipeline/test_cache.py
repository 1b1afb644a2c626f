"""Code fingerprints cover every module of ours a stage can execute, lazy imports too: an
edit reruns exactly the stages that can run the edited code."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from layers import package_tree
from support import copy_root

import dae
from dae.pipeline import cache
from dae.pipeline.dag import DAG, STAGES

REPO = Path(dae.__file__).resolve().parents[1]


def scratch_copy(tmp_path: Path) -> Path:
    """The package as it installs (dae/ with its layers inside), importable from
    PYTHONPATH=<returned folder> ahead of the installed one."""
    return package_tree(tmp_path / "src")


def _env(src: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(src), "TF_CPP_MIN_LOG_LEVEL": "3"}


def fingerprints(src: Path) -> dict[str, str]:
    """Each stage's code fingerprint, computed by the code in `src`."""
    modules = {n.name: n.component.__name__ for n in DAG}
    code = (
        "import json, sys, dae.pipeline.cache as c; "
        "assert c.__file__.startswith(sys.argv[2]), c.__file__; "
        "print(json.dumps({k: c.code_fingerprint(m) for k, m in json.loads(sys.argv[1]).items()}))"
    )
    argv = [sys.executable, "-c", code, json.dumps(modules), str(src)]
    out = subprocess.run(argv, capture_output=True, text=True, env=_env(src), cwd=src, check=True)
    return json.loads(out.stdout)


def _edit(src: Path, module: str) -> None:
    path = src / "dae" / Path(*module.split(".")).with_suffix(".py")
    path.write_text(path.read_text() + "\n# an edit\n")


def test_lazy_imports_are_in_a_stage_closure():
    evaluate = cache.closure("dae.components.evaluate")
    assert "dae.components.vae" in evaluate  # imported inside run(), not at the top
    assert {"dae", "dae.artifacts", "dae.components", "dae.serving.format.export"} <= set(evaluate)
    assert "dae.components.vae" in cache.closure("dae.components.report")
    assert not any(
        "dae.serving.model_server.rest" in cache.closure(n.component.__name__) for n in DAG
    )


def test_an_edit_changes_exactly_the_stages_that_can_run_it(tmp_path):
    src = scratch_copy(tmp_path)
    before = fingerprints(src)
    assert before == {n.name: cache.code_fingerprint(n.component) for n in DAG}
    _edit(src, "components.vae")  # the VAE's loss and ELBO, imported lazily
    after = fingerprints(src)
    changed = {stage for stage in STAGES if before[stage] != after[stage]}
    assert changed == {"tune", "train", "evaluate", "push", "report"}
    _edit(src, "serving.model_server.rest")  # no stage runs the REST server
    assert fingerprints(src) == after


@pytest.mark.slow
def test_a_lazily_imported_edit_reruns_its_stages(smoke_root, tmp_path):
    """The stale cache hit this prevents: editing components/vae.py left evaluate and
    report cached (their code key saw only the modules bound at import time)."""
    root = copy_root(smoke_root[0], tmp_path / "root")
    src = scratch_copy(tmp_path)

    def run() -> dict:
        cmd = [
            sys.executable,
            "-m",
            "dae.cli",
            "run",
            "--profile",
            "smoke",
            "--root",
            str(root),
            "--set",
            "model.family=dense",
        ]
        proc = subprocess.run(
            cmd, capture_output=True, text=True, env=_env(src), cwd=src, timeout=600
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        (line,) = [x for x in proc.stdout.splitlines() if x.startswith("metrics: ")]
        return json.loads(Path(line.removeprefix("metrics: ")).read_text())

    everything = [s for s in STAGES if DAG[STAGES.index(s)].component.SPEC.cache]
    run()  # the dense family's tune and train into the cache, with unedited code
    _edit(src, "components.vae")
    rerun = run()
    assert rerun["cached_stages"] == ["ingest", "validate", "transform"]
    _edit(src, "serving.model_server.rest")  # and the scratch copy itself caches
    assert run()["cached_stages"] == everything
