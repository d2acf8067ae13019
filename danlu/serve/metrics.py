"""GET /metrics: Prometheus counters of one server (its own registry, so that several apps in
one process, as in tests, do not share or clash)."""

from __future__ import annotations

from typing import Any


class Metrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter(
            "danlu_requests", "HTTP requests by route and status", ["route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "danlu_request_seconds",
            "Time from request to the end of the response, by route",
            ["route"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.tokens = Counter(
            "danlu_generated_tokens", "Tokens generated, by model", ["model"], registry=self.registry
        )
        self.queue = Gauge(
            "danlu_queue_depth",
            "Predict requests waiting for a batch, by model",
            ["model"],
            registry=self.registry,
        )

        self.decode_rows = Histogram(
            "danlu_decode_batch_rows",
            "Sequences decoded together in one step of a language model's continuous batch, by model",
            ["model"],
            registry=self.registry,
            buckets=(1, 2, 4, 8, 16, 32, 64),
        )

    def observe(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def count_tokens(self, model: str, n: int) -> None:
        self.tokens.labels(model).inc(n)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def watch_queue(self, model: str, depth: Any) -> None:
        self.queue.labels(model).set_function(depth)
