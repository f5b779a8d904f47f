"""Prometheus metrics, computed from the job store at scrape time.

Reading the database (not in-process counters) keeps the figures right across
worker processes and service restarts.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from medinfer.serve.store import JOB_STATES, Store

__all__ = ["BUCKETS", "StoreCollector", "render_metrics"]

BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class StoreCollector(Collector):
    """Queue depth, jobs per state, failures, deliveries and the end-to-end latency histogram."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterator[object]:
        counts = self.store.job_counts()
        yield GaugeMetricFamily("medinfer_queue_depth", "Jobs waiting for a worker",
                                value=counts.get("queued", 0))
        jobs = GaugeMetricFamily("medinfer_jobs", "Jobs by state", labels=["state"])
        for state in JOB_STATES:
            jobs.add_metric([state], counts.get(state, 0))
        yield jobs
        yield CounterMetricFamily("medinfer_job_failures", "Jobs failed for good",
                                  value=counts.get("failed", 0))
        deliveries = GaugeMetricFamily("medinfer_deliveries", "Result deliveries by state",
                                       labels=["state"])
        dcounts = self.store.delivery_counts()
        for state in ("pending", "sent", "failed", "superseded"):
            deliveries.add_metric([state], dcounts.get(state, 0))
        yield deliveries
        totals = self.store.job_totals()
        buckets = [(str(b), sum(t <= b for t in totals)) for b in BUCKETS]
        buckets.append(("+Inf", len(totals)))
        hist = HistogramMetricFamily(
            "medinfer_job_seconds", "Study complete -> results stored, per done job")
        hist.add_metric([], buckets, sum_value=sum(totals))
        yield hist


def render_metrics(store: Store) -> bytes:
    """The Prometheus text exposition of :class:`StoreCollector`."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(store))
    return generate_latest(registry)
