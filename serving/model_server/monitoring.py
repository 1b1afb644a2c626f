"""The server's Prometheus metrics, at TF Serving's /monitoring/prometheus/metrics (or the
path of --monitoring_config_file's PrometheusConfig), written by prometheus_client.

A collector reads, at each scrape, what the server already counts: answered requests by
status code, each model's available versions, the batcher's model calls and rows. It is
registered in a registry of its own per server (not prometheus_client's global one), so
several servers in one process keep their figures apart.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4  # the text format generate_latest writes


class ServerMetrics(Collector):
    """A Predictor's figures (its counts, its core's models, its batcher) as metric
    families."""

    def __init__(self, predictor):
        self.predictor = predictor

    def collect(self):
        p = self.predictor
        requests = CounterMetricFamily(
            "dae_serving_request_count",
            "Answered requests of every API and protocol, by status code.",
            labels=["status"],
        )
        for code, n in sorted(p.request_counts().items()):
            requests.add_metric([code], n)
        yield requests
        versions = GaugeMetricFamily(
            "dae_serving_model_versions_available",
            "Versions of each model in service (AVAILABLE).",
            labels=["model"],
        )
        for name, available in sorted(p.core.states().items()):
            versions.add_metric([name], len(available))
        yield versions
        if p.batcher is not None:
            yield CounterMetricFamily(
                "dae_serving_batches", "Model calls run by the batcher.", p.batcher.batches_run
            )
            yield CounterMetricFamily(
                "dae_serving_batched_rows", "Rows run by the batcher.", p.batcher.rows_run
            )


def registry(predictor) -> CollectorRegistry:
    """A registry of the predictor's own."""
    own = CollectorRegistry(auto_describe=False)
    own.register(ServerMetrics(predictor))
    return own


def exposition(own: CollectorRegistry) -> bytes:
    """The Prometheus text of a registry (label values escaped)."""
    return generate_latest(own)
