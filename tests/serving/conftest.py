"""Fixtures for serving tests: a real `dae serve` over a copy of a smoke run's model."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import Server, copy_version


@pytest.fixture(scope="module")
def model_dir(smoke_root) -> Path:
    """The servable version the session's smoke run pushed."""
    return smoke_root[0] / "serving" / "denoiser" / "1"


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


@pytest.fixture(scope="module")
def server(tmp_path_factory, model_dir):
    """One server for a module's read-only tests (predict, status, bad input)."""
    make, servers = _servers(tmp_path_factory.mktemp("serve"), model_dir)
    yield make()
    servers[0].stop()
