"""The import contracts (pyproject.toml's [tool.importlinter]) run on a copy of the package,
so a test can plant a violation without touching the tree. `dae/pipeline`, `dae/components`
and `dae/serving` link to the top-level folders (what import-linter reads in the repository);
the copy follows the links, as the wheel lays the package out."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def package_tree(dst: Path) -> Path:
    """`dae/` with its layers inside (the links followed), under `dst`; returns `dst`."""
    shutil.copytree(REPO / "dae", dst / "dae", ignore=shutil.ignore_patterns("__pycache__"))
    return dst


def lint_imports(tree: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("lint-imports")
    # The copy first; then the repository, for pyproject's contract types (tests/...).
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), str(REPO)])}
    return subprocess.run(
        [str(exe), "--config", str(REPO / "pyproject.toml"), "--no-cache"],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
    )
