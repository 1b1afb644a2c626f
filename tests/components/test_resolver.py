"""The resolver: which servable a model is judged against."""

import json

from dae.artifacts import Servable
from dae.components import resolver


def _version(base, version: int, model_sha: str | None):
    extra = base / str(version) / "assets.extra"
    extra.mkdir(parents=True)
    if model_sha:
        (extra / Servable.PROVENANCE).write_text(json.dumps({"model_sha256": model_sha}))


def test_nothing_served_means_no_baseline(tmp_path):
    assert resolver.resolve(tmp_path / "missing", "abc") == ({"version": None}, "nothing served")
    (tmp_path / "m" / ".tmp-push").mkdir(parents=True)  # a push in progress is no version
    assert resolver.resolve(tmp_path / "m", "abc")[0] == {"version": None}


def test_the_latest_version_is_the_baseline(tmp_path):
    _version(tmp_path, 1, "old")
    _version(tmp_path, 2, None)  # hand-made: no provenance, still a baseline
    assert resolver.resolve(tmp_path, "new")[0] == {
        "version": 2,
        "uri": str(tmp_path / "2"),
        "model_sha256": "unknown",
    }


def test_a_model_is_not_its_own_baseline(tmp_path):
    _version(tmp_path, 1, "other")
    _version(tmp_path, 3, "mine")
    # The same answer as "nothing served": the evaluator's key does not change with the push.
    assert resolver.resolve(tmp_path, "mine") == ({"version": None}, "version 3 is this model")


def test_the_resolver_always_runs():
    assert resolver.SPEC.cache is False
