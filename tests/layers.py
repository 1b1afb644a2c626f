"""The import contracts (pyproject.toml's [tool.importlinter]) checked on the package as it
installs: import-linter reads a package from one folder, and ours comes from four (see
package-dir), so the check runs on a copy laid out as the wheel lays it out.

  python tests/layers.py      # what `make test` runs; exits non-zero on a broken contract
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAYERS = ("pipeline", "components", "serving")


def package_tree(dst: Path) -> Path:
    """`dae/` with its layers inside, under `dst`; returns `dst`."""
    skip = shutil.ignore_patterns("__pycache__")
    shutil.copytree(REPO / "dae", dst / "dae", ignore=skip)
    for layer in LAYERS:
        shutil.copytree(REPO / layer, dst / "dae" / layer, ignore=skip)
    return dst


def lint_imports(tree: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("lint-imports")
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run([str(exe), "--config", str(REPO / "pyproject.toml"), "--no-cache"],
                          cwd=tree, env=env, capture_output=True, text=True)  # fmt: skip


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        proc = lint_imports(package_tree(Path(tmp)))
    report = proc.stdout[proc.stdout.find("Contracts") :] or proc.stdout
    print(report.strip(), proc.stderr.strip(), sep="\n")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
