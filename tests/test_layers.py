"""The intended layers hold (import-linter's contracts), and a violation is caught; the
generic layer of pipeline/ knows no stage by name."""

import ast
import re
import tomllib
from pathlib import Path

import pytest
from layers import REPO, lint_imports, package_tree

from dae.pipeline.dag import STAGES


def test_the_import_contracts_hold(tmp_path):
    proc = lint_imports(package_tree(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    contracts = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    assert f"{len(contracts['contracts'])} kept, 0 broken" in proc.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        (
            "serving/model_server/rest.py",
            "from dae.components import models",
            "serving reads SavedModels",
        ),
        ("serving/batch/denoise.py", "from dae.serving.model_server import core", "by role"),
        ("serving/explorer/app.py", "from dae.serving.batch import sources", "by role"),
        ("serving/format/export.py", "from dae.serving.apis import client", "by role"),
        ("components/evaluate.py", "from dae.serving.apis import client", "only the export"),
        ("components/evaluate.py", "from dae.components import train", "no stage imports"),
        ("components/models.py", "import dae.cli", "nothing imports the CLI"),
        ("dae/artifacts.py", "from dae.serving.format import export", "-> shared formats"),
    ],
)
def test_a_broken_layer_is_caught(tmp_path, module, line, contract):
    tree = package_tree(tmp_path)
    path = tree / "dae" / module.removeprefix("dae/")
    path.write_text(path.read_text() + f"\n{line}  # noqa\n")
    proc = lint_imports(tree)
    contracts = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    (name,) = [c["name"] for c in contracts["contracts"] if contract in c["name"]]
    assert proc.returncode != 0 and f"{name} BROKEN" in proc.stdout.splitlines()


PRIVATE = "private modules of libraries only in dae.compat"


def test_a_private_module_of_a_library_is_caught_outside_dae_compat(tmp_path):
    """However it is reached: an import, a lazy one in a function, importlib with a literal
    name, an attribute chain on an imported library; the same in dae.compat is allowed."""
    planted = {
        "components/models.py": ("from keras.src import ops", "keras.src.ops"),
        "serving/batch/beam.py": (
            "def _lazy():\n    import apache_beam.runners.worker.sdk_worker",
            "apache_beam.runners.worker.sdk_worker",
        ),
        "pipeline/runner.py": (
            'import importlib\nimportlib.import_module("tensorflow.python.framework.ops")',
            "tensorflow.python.framework.ops",
        ),
        "dae/artifacts.py": (
            "import numpy as np\n_ = np._core.multiarray",
            "numpy._core.multiarray",
        ),
        "dae/compat/keras.py": ("from keras.src import ops", None),
    }
    tree = package_tree(tmp_path)
    for module, (line, _) in planted.items():
        path = tree / "dae" / module.removeprefix("dae/")
        path.write_text(path.read_text() + f"\n{line}\n")
    proc = lint_imports(tree)
    assert proc.returncode != 0 and f"{PRIVATE} BROKEN" in proc.stdout.splitlines()
    for module, (_, used) in planted.items():
        name = "dae." + module.removeprefix("dae/").removesuffix(".py").replace("/", ".")
        found = re.findall(rf"^{re.escape(name)}:\d+ uses (\S+)$", proc.stdout, re.M)
        assert (used in found) if used else not found, (module, found)
    assert "Only dae.compat may use a library's private modules." in proc.stdout


def _strings(path: Path) -> set[str]:
    return {
        node.value
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    }


def test_no_module_of_pipeline_names_a_stage():
    """Only the DAG's definition may. Some stage names are other things' names too: the
    config's sections (config.py) and a dataset's split (prepare_data.py)."""
    homonyms = {
        "config.py": {"validate", "tune", "train", "evaluate", "push"},
        "prepare_data.py": {"train"},
    }
    for path in sorted((REPO / "pipeline").glob("*.py")):
        if path.name == "dag.py":
            continue
        named = _strings(path) & set(STAGES) - homonyms.get(path.name, set())
        assert not named, f"{path.name} names stage(s) {sorted(named)}"
