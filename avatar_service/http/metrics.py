"""Prometheus metrics of one app: requests, jobs, queue, ComfyUI servers, uploads, deliveries.

Each app has its own registry (several apps may live in one process, as in the tests). Job
metrics are observed from the job events (one place, whatever drives the jobs); gauges of the
current state are read when ``/metrics`` is scraped.
"""

from __future__ import annotations

import logging
from collections import Counter as Tally
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..comfyui import ComfyUIClient
from ..jobs import Job, JobStatus
from ..jobs.job import TERMINAL
from ..persistence.database import Database, DatabaseUnavailable

logger = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Job durations run from a second to the 10-minute deadline.
_JOB_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, float("inf"))


class Metrics:
    """The registry and instruments of one app."""

    def __init__(
        self,
        *,
        clients: Sequence[ComfyUIClient],
        unfinished: Callable[[], list[Job]],
        webhook_db: Callable[[], Database | None],
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.requests = Counter(
            "avatar_http_requests",
            "HTTP requests answered, by route, method and status.",
            ["route", "method", "status"],
            registry=registry,
        )
        self.request_seconds = Histogram(
            "avatar_http_request_duration_seconds",
            "Time to answer a request (until the body starts, for streams).",
            ["route"],
            registry=registry,
        )
        self.jobs = Counter(
            "avatar_jobs_finished",
            "Jobs that reached a final state, by state and style.",
            ["state", "style"],
            registry=registry,
        )
        self.job_errors = Counter(
            "avatar_job_errors", "Failed jobs by error code.", ["code"], registry=registry
        )
        self.queued_seconds = Histogram(
            "avatar_job_queued_seconds",
            "Time a job waited in ComfyUI's queue.",
            ["style"],
            buckets=_JOB_BUCKETS,
            registry=registry,
        )
        self.execution_seconds = Histogram(
            "avatar_job_execution_seconds",
            "Time ComfyUI ran a job's prompt.",
            ["style"],
            buckets=_JOB_BUCKETS,
            registry=registry,
        )
        self.total_seconds = Histogram(
            "avatar_job_total_seconds",
            "Time from request to a job's final state.",
            ["style", "state"],
            buckets=_JOB_BUCKETS,
            registry=registry,
        )
        self.uploads = Counter(
            "avatar_uploads",
            "Photo uploads by outcome (stored or the error code).",
            ["outcome"],
            registry=registry,
        )
        self.forwards = Counter(
            "avatar_forward_deliveries",
            "Avatars forwarded to UPLOAD_URL, by outcome.",
            ["outcome"],
            registry=registry,
        )
        self.rate_limited = Counter(
            "avatar_rate_limited",
            "Requests refused by a rate limit, by route.",
            ["route"],
            registry=registry,
        )
        registry.register(_StateCollector(clients, unfinished, webhook_db))

    def observe_event(self, job_id: str, event: str, data: dict[str, Any]) -> None:
        """Count a job's final state and its durations (a JobEvents listener)."""
        if event not in TERMINAL:
            return
        style = str(data.get("style", ""))
        self.jobs.labels(event, style).inc()
        timings = data.get("timings") or {}
        if "queuedMs" in timings:
            self.queued_seconds.labels(style).observe(timings["queuedMs"] / 1000)
        if "executionMs" in timings:
            self.execution_seconds.labels(style).observe(timings["executionMs"] / 1000)
        if "totalMs" in timings:
            self.total_seconds.labels(style, event).observe(timings["totalMs"] / 1000)
        if event == JobStatus.FAILED and data.get("error"):
            self.job_errors.labels(data["error"].get("code", "unknown")).inc()

    def observe_forwarding(self, state: str) -> None:
        """Count an avatar forwarding that ended (delivered or failed; an outbox hook)."""
        self.forwards.labels(state).inc()

    def render(self) -> bytes:
        """The text exposition of every metric."""
        return generate_latest(self.registry)


class _StateCollector(Collector):
    """Gauges read at scrape time: queue, slots per server, server health, webhook deliveries."""

    def __init__(
        self,
        clients: Sequence[ComfyUIClient],
        unfinished: Callable[[], list[Job]],
        webhook_db: Callable[[], Database | None],
    ) -> None:
        self._clients = clients
        self._unfinished = unfinished
        self._webhook_db = webhook_db

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        jobs = self._unfinished()
        by_status = Tally(job.status for job in jobs)
        in_flight = GaugeMetricFamily(
            "avatar_jobs_in_flight", "Jobs not yet ended, by status.", labels=["status"]
        )
        for status in (JobStatus.QUEUED, JobStatus.RUNNING):
            in_flight.add_metric([status.value], by_status.get(status, 0))
        yield in_flight
        yield GaugeMetricFamily(
            "avatar_queue_length",
            "Jobs waiting (queued) to run.",
            value=by_status.get(JobStatus.QUEUED, 0),
        )
        slots = GaugeMetricFamily(
            "avatar_server_slots_in_use",
            "Jobs in flight on each ComfyUI server (queued there or running).",
            labels=["server"],
        )
        connected = GaugeMetricFamily(
            "avatar_comfyui_up",
            "1 while the websocket to a ComfyUI server is connected.",
            labels=["server"],
        )
        per_server = Tally(job.server for job in jobs if job.server)
        for client in self._clients:
            slots.add_metric([client.base_url], per_server.get(client.base_url, 0))
            connected.add_metric([client.base_url], 1 if client.connected else 0)
        yield slots
        yield connected
        database = self._webhook_db()
        if database is not None:
            deliveries = GaugeMetricFamily(
                "avatar_webhook_deliveries",
                "Webhook deliveries by state (pending, delivered, failed).",
                labels=["state"],
            )
            counts = {"pending": 0, "delivered": 0, "failed": 0}
            try:
                with database.transaction() as db:
                    if database.table_exists(db, "deliveries"):  # none before the first start
                        rows = db.execute(
                            "SELECT state, COUNT(*) FROM deliveries WHERE kind = 'webhook' "
                            "GROUP BY state"
                        ).fetchall()
                        counts.update({row[0]: row[1] for row in rows})
            except DatabaseUnavailable:
                logger.warning("metrics: the database does not answer; webhook gauges are 0")
            for state, count in counts.items():
                deliveries.add_metric([state], count)
            yield deliveries
