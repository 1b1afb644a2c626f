"""Shared fixtures: tiny datasets in temp dirs, stage contexts, one real smoke run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from support import dae, digit_like, write_examples  # noqa: E402

from dae.component import StageContext  # noqa: E402
from dae.pipeline.config import load_config  # noqa: E402


@pytest.fixture
def tiny_examples(tmp_path) -> Path:
    return write_examples(
        tmp_path / "examples",
        {
            "train": digit_like(96, seed=1),
            "eval": digit_like(32, seed=2),
            "test": digit_like(32, seed=3),
        },
    )


@pytest.fixture
def config():
    return load_config(None, "smoke", [])


@pytest.fixture
def make_ctx(tmp_path, config):
    def make(inputs: dict[str, Path], outputs: tuple[str, ...], cfg=None) -> StageContext:
        outs = {name: tmp_path / "out" / name for name in outputs}
        for p in outs.values():
            p.mkdir(parents=True, exist_ok=True)
        return StageContext(
            cfg or config, inputs, outs, "test-run", tmp_path, tmp_path / "serving", lambda m: None
        )

    return make


def pytest_collection_modifyitems(items):
    """Every test that needs the real smoke run is slow (`pytest -m "not slow"` skips it)."""
    for item in items:
        if "smoke_root" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def postgres():
    """One real PostgreSQL server for the session."""
    from postgres import PostgresServer

    server = PostgresServer()
    yield server
    server.stop()


@pytest.fixture
def postgres_url(postgres) -> str:
    """The URL of a fresh database on it (password included: the test is the Secret)."""
    return postgres.create_database()


@pytest.fixture(scope="session")
def smoke_root(tmp_path_factory):
    """One real smoke run (real MNIST, every stage) shared by the tests that need its
    outputs: (root, run_dir, stdout). Tests must not change what it wrote."""
    root = tmp_path_factory.mktemp("smoke")
    proc = dae("run", "--profile", "smoke", "--root", str(root))
    (run_dir,) = (root / "runs").iterdir()
    return root, run_dir, proc.stdout
