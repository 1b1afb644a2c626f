"""The code version a run records: the commit, "-dirty" when any folder the installed
package is built from has changes (a temporary git repository laid out like dae's)."""

import subprocess
import sys

import pytest

from dae.pipeline import tracking


def _git(repo, *args) -> str:
    run = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    return run.stdout.strip()


@pytest.fixture
def checkout(tmp_path, monkeypatch):
    """A package `daeprobe` whose layers live in top-level folders, linked in as dae's are."""
    repo = tmp_path / "repo"
    (repo / "daeprobe").mkdir(parents=True)
    (repo / "daeprobe" / "__init__.py").write_text("")
    for layer in ("pipeline", "components", "serving"):
        (repo / layer).mkdir()
        (repo / layer / "__init__.py").write_text("")
        (repo / layer / "code.py").write_text("x = 1\n")
        (repo / "daeprobe" / layer).symlink_to(f"../{layer}")
    (repo / "README.md").write_text("not code\n")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first")
    monkeypatch.syspath_prepend(str(repo))
    monkeypatch.setattr(tracking, "PACKAGE", "daeprobe", raising=False)
    # Where the code ran from before the package's folders were looked up.
    monkeypatch.setattr(tracking, "__file__", str(repo / "pipeline" / "tracking.py"))
    yield repo, _git(repo, "rev-parse", "HEAD")
    sys.modules.pop("daeprobe", None)


@pytest.mark.parametrize(
    "edited", ["components/code.py", "serving/code.py", "daeprobe/__init__.py", "pipeline/code.py"]
)
def test_an_edit_in_any_layer_is_dirty(checkout, edited):
    repo, commit = checkout
    assert tracking.code_version() == commit
    (repo / edited).write_text("x = 2\n")
    assert tracking.code_version() == f"{commit}-dirty"


def test_files_outside_the_package_are_not_code(checkout):
    repo, commit = checkout
    (repo / "README.md").write_text("edited\n")
    (repo / "notes.txt").write_text("new\n")
    assert tracking.code_version() == commit
