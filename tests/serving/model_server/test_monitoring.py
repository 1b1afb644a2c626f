"""The Prometheus metrics at /monitoring/prometheus/metrics (TF Serving's PrometheusConfig path)."""

import types

from prometheus_client.parser import text_string_to_metric_families
from support import Server, copy_version

from dae.serving.model_server.core import ServerCore
from dae.serving.model_server.predict import Predictor

NAME = 'de"noi\\ser\nv2'  # a quote, a backslash and a newline: all legal in a model name


def samples(text: str) -> dict[tuple, float]:
    """{(sample name, sorted labels): value}, as a Prometheus scraper parses the text."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_a_model_name_with_quote_backslash_and_newline_gives_a_valid_exposition(
    tmp_path, model_dir
):
    base = tmp_path / "denoiser"
    copy_version(model_dir, base, 1)
    server = Server(base, name=NAME)
    try:
        assert server.http.get("/v1/models/nope").status_code == 404
        r = server.http.get("/monitoring/prometheus/metrics")
    finally:
        server.stop()
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain"), r.text
    got = samples(r.text)
    assert got[("dae_serving_model_versions_available", (("model", NAME),))] == 1, r.text
    assert got[("dae_serving_request_count_total", (("status", "NOT_FOUND"),))] == 1, r.text


def test_each_server_has_its_own_registry():
    """Two servers in one process (as in the tests) count apart; batching's counters are
    there only for the server that batches."""
    plain = Predictor(ServerCore())
    batched = Predictor(ServerCore(), batcher=types.SimpleNamespace(batches_run=3, rows_run=10))
    plain.record("OK")
    plain.record("OK")
    batched.record("INVALID_ARGUMENT")
    assert samples(plain.metrics().decode()) == {
        ("dae_serving_request_count_total", (("status", "OK"),)): 2
    }
    assert samples(batched.metrics().decode()) == {
        ("dae_serving_request_count_total", (("status", "INVALID_ARGUMENT"),)): 1,
        ("dae_serving_batches_total", ()): 3,
        ("dae_serving_batched_rows_total", ()): 10,
    }
