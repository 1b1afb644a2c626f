"""Fixtures for the explorer: a model server with two versions of a tiny VAE, and test
images. (A model server's versions share their signatures: `dae serve` refuses a version
that would break the clients of another, so a plain denoiser is tests/serving's `server`.)"""

from __future__ import annotations

from pathlib import Path

import pytest
from support import Server, digit_like, tiny_servable, write_examples


@pytest.fixture(scope="session")
def tiny_versions(tmp_path_factory) -> Path:
    """A base path with two tiny VAEs (two seeds) as versions 1 and 2."""
    base = tmp_path_factory.mktemp("explorer-tiny") / "denoiser"
    tiny_servable(base, "vae", seed=0)
    tiny_servable(base, "vae", seed=1)
    return base


@pytest.fixture(scope="session")
def tiny_server(tiny_versions):
    server = Server(tiny_versions, "--num-versions", "2")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def digit_examples(tmp_path_factory) -> Path:
    """An examples artifact in ingest's format whose test split has 40 digit-like images."""
    artifact = tmp_path_factory.mktemp("explorer-examples") / "examples"
    return write_examples(artifact, {"test": digit_like(40, seed=7)})
