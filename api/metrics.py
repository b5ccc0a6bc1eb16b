"""Prometheus metrics at /metrics.

- API requests by route and errcode, with latency histograms (prometheus_client; under gunicorn
  set PROMETHEUS_MULTIPROC_DIR so all worker processes are aggregated — `facelib up` and the
  tests do).
- Jobs by kind and outcome with stage durations, queue depth and callback outcomes are read at
  scrape time from Postgres and Redis, so they cover every worker on every host.
"""

from __future__ import annotations

import hmac
import threading
import time
from typing import Any

from flask import Blueprint, Flask, Response, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from api.auth import require_scope
from api.schemas import documented
from shared import db
from shared.db import transaction
from shared.queue import QUEUE_CALLBACKS, QUEUE_FACES, get_redis
from shared.settings import get_settings

REQUESTS = Counter(
    "facelib_http_requests_total", "API requests", ["method", "route", "errcode", "status"]
)
LATENCY = Histogram(
    "facelib_http_request_duration_seconds",
    "API request latency",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
DB_SCRAPES = Counter(
    "facelib_metrics_db_scrapes_total", "Times the database series were computed (cache misses)"
)
STAGE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

bp = Blueprint("metrics", __name__)


class DatabaseCollector:
    """Job, queue and callback series computed from the source of truth at scrape time, at most
    once per FACELIB_METRICS_CACHE_SECONDS per process (the aggregates scan the jobs table)."""

    _cache: dict[str, Any] = {"at": -1e18, "families": []}
    _lock = threading.Lock()

    def collect(self):  # noqa: ANN201 - prometheus_client's collector protocol
        ttl = get_settings().metrics_cache_seconds
        with self._lock:
            now = time.monotonic()
            if now - self._cache["at"] >= ttl:
                self._cache.update(families=list(self._compute()), at=now)
                DB_SCRAPES.inc()
            families = self._cache["families"]
        yield from families

    def _compute(self):  # noqa: ANN202 - a generator of metric families
        jobs = CounterMetricFamily(
            "facelib_jobs", "Finished jobs by kind and outcome errcode", labels=["kind", "errcode"]
        )
        running = GaugeMetricFamily("facelib_jobs_open", "Jobs not finished", labels=["status"])
        stages = {}
        callbacks = CounterMetricFamily(
            "facelib_callback_attempts", "Callback attempts by outcome", labels=["outcome"]
        )
        deliveries = GaugeMetricFamily(
            "facelib_callback_deliveries", "Callback deliveries by status", labels=["status"]
        )
        with transaction() as conn:
            counts = db.ops.metric_counts(conn)
            for r in counts["finished_jobs"]:
                jobs.add_metric([r["kind"], str(r["errcode"])], r["n"])
            for r in counts["open_jobs"]:
                running.add_metric([r["status"]], r["n"])
            for stage in db.ops.JOB_STAGES:
                r = db.ops.stage_histogram(conn, stage, STAGE_BUCKETS)
                fam = HistogramMetricFamily(
                    f"facelib_job_{stage}_seconds", f"Job stage duration: {stage}"
                )
                fam.add_metric(
                    [],
                    [(str(b), r[f"b{i}"]) for i, b in enumerate(STAGE_BUCKETS)]
                    + [("+Inf", r["n"])],
                    sum_value=r["s"],
                )
                stages[stage] = fam
            for r in counts["callback_attempts"]:
                callbacks.add_metric([r["o"]], r["n"])
            for r in counts["deliveries"]:
                deliveries.add_metric([r["status"]], r["n"])
        depth = GaugeMetricFamily("facelib_queue_depth", "Messages waiting", labels=["queue"])
        for queue in (QUEUE_FACES, QUEUE_CALLBACKS):
            depth.add_metric([queue], get_redis().llen(queue))
        yield jobs
        yield running
        yield from stages.values()
        yield callbacks
        yield deliveries
        yield depth


def _registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    if get_settings().prometheus_multiproc_dir:
        multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(REQUESTS)
        registry.register(LATENCY)
        registry.register(DB_SCRAPES)
    registry.register(DatabaseCollector())
    return registry


def _metrics_text() -> Response:
    return Response(generate_latest(_registry()), mimetype=CONTENT_TYPE_LATEST)


_scoped_metrics = require_scope("metrics:read")(_metrics_text)


@bp.get("/metrics")
@documented(produces="text/plain")
def metrics() -> Response:
    """Prometheus text; needs `Authorization: Bearer <FACELIB_METRICS_TOKEN>` (a static scrape
    secret) or a token whose client holds metrics:read (or admin)."""
    secret = get_settings().metrics_token
    if secret:
        presented = request.headers.get("Authorization", "").strip()
        if presented[:7].lower() == "bearer ":
            presented = presented[7:].strip()
        if hmac.compare_digest(presented.encode(), secret.encode()):
            return _metrics_text()
    return _scoped_metrics()


metrics.required_scopes = ("metrics:read",)  # type: ignore[attr-defined] - for the document


def init_app(app: Flask) -> None:
    @app.after_request
    def _observe(resp: Response) -> Response:
        route = request.url_rule.rule if request.url_rule else "unmatched"
        errcode = resp.headers.get("X-Errcode", "")
        REQUESTS.labels(request.method, route, errcode, str(resp.status_code)).inc()
        LATENCY.labels(request.method, route).observe(
            time.monotonic() - g.get("request_started", time.monotonic())
        )
        return resp
