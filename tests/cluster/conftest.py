"""The test cluster for the session: started once (or reused when `make cluster` or another
session started it, which its state file tells), torn down at the end by the last session out
unless `make cluster` started it. Where the
machine cannot run it (no root, no Go: a laptop) the cluster tests skip with one line;
`DAE_REQUIRE_CLUSTER=1` (.ci/run) turns that skip into a failure."""

from __future__ import annotations

import os

import pytest


def pytest_configure(config):
    config.addinivalue_line("markers", "cluster: needs the real single-node test cluster")


def _unavailable(reason: str):
    line = f"CLUSTER SUITE NOT RUN: {reason}"
    if os.environ.get("DAE_REQUIRE_CLUSTER") == "1":
        pytest.fail(f"{line} (DAE_REQUIRE_CLUSTER=1)", pytrace=False)
    pytest.skip(line)


@pytest.fixture(scope="session")
def cluster():
    from cluster import Cluster, missing_prerequisites

    problem = missing_prerequisites()
    if problem:
        _unavailable(problem)
    with Cluster().session() as running:
        yield running


@pytest.fixture
def enforcer(cluster) -> str:
    """The NetworkPolicy enforcer the cluster runs (policies.py); none is reported as the
    cluster's absence is."""
    state = cluster.state()
    if not state.get("enforcer"):
        _unavailable(state.get("problem", "no NetworkPolicy enforcer"))
    return state["enforcer"]
