"""build.py's cache logic (key, whole-or-absent folders, a missing Go), on a copy of the
recipe with the compile step replaced: nothing is built here."""

from __future__ import annotations

import shutil
from pathlib import Path

import build
import pytest


@pytest.fixture
def module(tmp_path) -> Path:
    copy = tmp_path / "module"
    shutil.copytree(build.MODULE, copy)
    return copy


def test_key_names_the_pinned_versions(module):
    versions = build.pinned((module / "go.mod").read_text())
    assert versions["k8s.io/kubernetes"] == "v1.34.4"
    assert versions["k8s.io/client-go"] == "v0.34.4"  # a replace line is no pin
    assert build.key(module).startswith(
        "k8s-v1.34.4-etcd-v3.6.16-argo-v3.7.18-coredns-v1.14.1-kube-router-v2.1.0-beam-v2.77.0-"
    )


@pytest.mark.parametrize("changed", ["go.mod", "go.sum", "coredns/main.go", "argo/go.mod"])
def test_a_changed_recipe_gets_a_new_key(module, changed):
    before = build.key(module)
    assert build.key(module) == before
    with open(module / changed, "a") as f:
        f.write("\n// changed\n")
    assert build.key(module) != before


def test_a_module_without_a_pin_is_one_line(module):
    text = (module / "go.mod").read_text()
    (module / "go.mod").write_text(text.replace("k8s.io/kubernetes v1.34.4", ""))
    with pytest.raises(build.BuildError, match="pin no version of k8s.io/kubernetes$"):
        build.key(module)


def test_a_killed_build_leaves_no_folder_and_the_next_build_completes(
    module, tmp_path, monkeypatch
):
    cache = tmp_path / "cache"
    calls = []

    def killed(out, mod):
        (out / "etcd").write_text("half")
        raise KeyboardInterrupt

    def whole(out, mod):
        calls.append(out)
        (out / "etcd").write_text("whole")

    monkeypatch.setattr(build, "compile_into", killed)
    with pytest.raises(KeyboardInterrupt):
        build.binaries(module, cache)
    assert list(cache.iterdir()) == [cache / ".lock"]

    # A partial folder from a process killed harder (no cleanup) is never taken as done.
    leftover = cache / f".partial-{build.key(module)}-99999"
    leftover.mkdir()
    monkeypatch.setattr(build, "compile_into", whole)
    done = build.binaries(module, cache)
    assert done == cache / build.key(module)
    assert (done / "etcd").read_text() == "whole"
    assert not leftover.exists()

    # Warm: the folder is there, nothing is compiled again.
    assert build.binaries(module, cache) == done
    assert len(calls) == 1


def test_missing_go_is_one_line_naming_it(module, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(build.BuildError, match=r"^go not found on PATH"):
        build.binaries(module, tmp_path / "cache")


@pytest.mark.parametrize(
    ("package", "name"),
    [
        ("go.etcd.io/etcd/server/v3", "server"),
        ("k8s.io/kubernetes/cmd/kubelet", "kubelet"),
        ("./coredns", "coredns"),
    ],
)
def test_default_name_is_what_go_build_writes(package, name):
    assert build.default_name(package) == name
