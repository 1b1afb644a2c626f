"""Fixtures for serving tests: a real `dae serve` over copies of a tiny model pushed here."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import Server, copy_version, tiny_servable


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    """A servable version of a tiny dense denoiser (28x28x1 in [0, 1] -> same), fitted a
    few steps on digit-like images and pushed as push does: built in seconds, so serving
    tests need no pipeline run. Tests copy it and must not change it."""
    return tiny_servable(tmp_path_factory.mktemp("tiny-model") / "denoiser")


def _servers(root: Path, model_dir: Path):
    servers = []

    def make(*extra: str, versions=(1,)) -> Server:
        base = root / f"base{len(servers)}" / "denoiser"
        base.mkdir(parents=True)
        for v in versions:
            copy_version(model_dir, base, v)
        servers.append(Server(base, *extra))
        return servers[-1]

    return make, servers


@pytest.fixture
def make_server(tmp_path, model_dir):
    """A fresh server per call, stopped after the test."""
    make, servers = _servers(tmp_path, model_dir)
    yield make
    for s in servers:
        s.stop()


@pytest.fixture(scope="session")
def server(tmp_path_factory, model_dir):
    """One server for the read-only tests of every module (predict, status, bad input):
    a test must leave it as it found it."""
    make, servers = _servers(tmp_path_factory.mktemp("serve"), model_dir)
    yield make()
    servers[0].stop()
