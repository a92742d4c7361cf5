"""Prometheus metrics at `GET /metrics`.

Counters and histograms count what this process did (Prometheus sums replicas). Values that
describe shared state (queue depth, running jobs, connected agents) come from the database,
so every replica reports the same; a scrape costs a few cheap queries, cached for a second.
Tag labels are capped (`MAX_TAG_LABELS`); the rest are folded into `tag="other"`.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tagrun.server.errors import Unauthorized
from tagrun.server.services.fleet import LIVE_STATES, STATES

MAX_TAG_LABELS = 100
METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
CACHE_S = 1.0
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
                   30, 60, 300)
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600, 14400)

REGISTRY = CollectorRegistry(auto_describe=True)
JOBS_SUBMITTED = Counter("tagrun_jobs_submitted", "Jobs created by submits", registry=REGISTRY)
JOBS_FINISHED = Counter("tagrun_jobs_finished", "Attempts that ended, by outcome "
                        "(succeeded, failed, cancelled)", ["status"], registry=REGISTRY)
RETRIES = Counter("tagrun_job_retries", "Failed attempts requeued for a retry",
                  registry=REGISTRY)
DEAD_LETTERED = Counter("tagrun_jobs_dead_lettered", "Jobs failed with no attempts left",
                        registry=REGISTRY)
LEASE_EXPIRIES = Counter("tagrun_lease_expiries", "Leases that expired (holder gone)",
                         registry=REGISTRY)
CLAIMS_UNACKNOWLEDGED = Counter(
    "tagrun_claims_unacknowledged", "Jobs handed to an agent that never acknowledged them "
    "(the claim answer was lost), put back in the queue", registry=REGISTRY)
LOGS_TRUNCATED = Counter("tagrun_job_logs_truncated", "Jobs whose stored log reached "
                         "TAGRUN_MAX_LOG_BYTES (the rest was dropped)", registry=REGISTRY)
QUEUE_WAIT = Histogram("tagrun_queue_wait_seconds", "From due (run_at) to start, by tag "
                       "(the first MAX_TAG_LABELS tags seen; the rest as other)", ["tag"],
                       buckets=LATENCY_BUCKETS, registry=REGISTRY)
DISPATCH_LATENCY = Histogram("tagrun_dispatch_latency_seconds",
                             "From submit (or run_at) to the job's start",
                             buckets=LATENCY_BUCKETS, registry=REGISTRY)
RUN_DURATION = Histogram("tagrun_job_duration_seconds", "How long attempts ran",
                         buckets=DURATION_BUCKETS, registry=REGISTRY)
HTTP_DURATION = Histogram("tagrun_http_request_duration_seconds",
                          "HTTP requests, by route template", ["method", "route", "status"],
                          buckets=LATENCY_BUCKETS, registry=REGISTRY)


def fold_tags(counts: dict[str, int]) -> dict[str, int]:
    """Keep the MAX_TAG_LABELS largest tags; sum the rest as 'other'."""
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    kept = dict(ranked[:MAX_TAG_LABELS])
    rest = sum(n for _, n in ranked[MAX_TAG_LABELS:])
    if rest:
        kept["other"] = kept.get("other", 0) + rest
    return kept


# Series looked up once each (`labels()` takes a lock and builds its key every call).
# The first MAX_TAG_LABELS tags have their own queue wait series; later tags share "other".
_WAIT_SERIES: dict[str, Histogram] = {}
_FINISHED_SERIES: dict[str, Counter] = {}
_OTHER_WAIT: Histogram | None = None


def observe_queue_wait(tag: str, seconds: float) -> None:
    """A job started `seconds` after it was due; labelled by its tag while labels last."""
    series = _WAIT_SERIES.get(tag)
    if series is None:
        if len(_WAIT_SERIES) < MAX_TAG_LABELS:
            series = _WAIT_SERIES[tag] = QUEUE_WAIT.labels(tag)
        else:
            series = _other_wait()
    series.observe(max(seconds, 0.0))


def _other_wait() -> Histogram:
    """The queue wait series the tags past the first MAX_TAG_LABELS share."""
    global _OTHER_WAIT
    if _OTHER_WAIT is None:
        _OTHER_WAIT = QUEUE_WAIT.labels("other")
    return _OTHER_WAIT


def job_finished(outcome: str) -> None:
    """An attempt ended: succeeded, failed or cancelled."""
    series = _FINISHED_SERIES.get(outcome)
    if series is None:
        series = _FINISHED_SERIES[outcome] = JOBS_FINISHED.labels(outcome)
    series.inc()


class SharedState(Collector):
    """Gauges read from the database (and this process), refreshed at most once a second."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self._read_at = float("-inf")

    async def refresh(self, read: Callable[[], Awaitable[dict[str, Any]]]) -> None:
        if time.monotonic() - self._read_at >= CACHE_S:
            self.values = await read()
            self._read_at = time.monotonic()

    def collect(self) -> Iterator[Metric]:
        v = self.values
        if not v:
            return
        queued = GaugeMetricFamily("tagrun_queue_depth", "Queued jobs, by tag", labels=["tag"])
        for tag, n in fold_tags(v["queued"]).items():
            queued.add_metric([tag], n)
        running = GaugeMetricFamily("tagrun_jobs_running", "Running jobs, by tag",
                                    labels=["tag"])
        for tag, n in fold_tags(v["running"]).items():
            running.add_metric([tag], n)
        agents = GaugeMetricFamily("tagrun_agents_connected", "Live (not stale) agents, by "
                                   "group", labels=["group"])
        for group, n in sorted(v["agents"].items())[:MAX_TAG_LABELS]:
            agents.add_metric([group], n)
        states = GaugeMetricFamily("tagrun_agents", "Agents and workers by state (live, busy, "
                                   "stopped, stale, token_revoked)", labels=["state"])
        for state in STATES:
            states.add_metric([state], v["states"].get(state, 0))
        oldest = GaugeMetricFamily("tagrun_queue_oldest_age_seconds", "How long the oldest "
                                   "due job of each tag has waited", labels=["tag"])
        ages = v.get("oldest", {})
        for tag in fold_tags({t: v["queued"].get(t, 0) for t in ages}):
            if tag in ages:
                oldest.add_metric([tag], ages[tag])
        slots = GaugeMetricFamily("tagrun_agent_slots", "Agent slots: busy (jobs agents run, "
                                  "from the database), idle (free slots of the claims this "
                                  "process holds open)", labels=["state"])
        slots.add_metric(["busy"], v.get("slots_busy", 0))
        slots.add_metric(["idle"], v.get("slots_idle", 0))
        yield from (queued, running, agents, states, oldest, slots)
        yield GaugeMetricFamily("tagrun_long_poll_waiters", "Agent claims held open by this "
                                "process", value=v["waiters"])
        yield GaugeMetricFamily("tagrun_db_pool_in_use", "Database connections in use by "
                                "this process", value=v["pool_in_use"])
        yield GaugeMetricFamily("tagrun_db_pool_size", "Database connections open in this "
                                "process", value=v["pool_size"])
        yield GaugeMetricFamily("tagrun_db_pool_max", "Database connections this process may "
                                "open (TAGRUN_DB_POOL_SIZE)", value=v["pool_max"])


SHARED = SharedState()
REGISTRY.register(SHARED)


async def _read_shared(request: Request) -> dict[str, Any]:
    state = request.app.state
    overview = await state.store.workers_overview(state.config.stale_after_s)
    running: dict[str, int] = {}
    for row in overview.running:
        running[row.tag] = running.get(row.tag, 0) + row.n
    agents: dict[str, int] = {}
    states: dict[str, int] = {}
    for worker in overview.workers:
        states[worker.state] = states.get(worker.state, 0) + 1
        if worker.kind == "agent" and worker.state in LIVE_STATES:
            agents[worker.grp] = agents.get(worker.grp, 0) + 1
    agent_names = {w.name for w in overview.workers if w.kind == "agent"}
    busy = sum(row.n for row in overview.running if row.worker in agent_names)
    pool = state.store.pool
    return {"queued": overview.queued, "running": running, "agents": agents, "states": states,
            "oldest": overview.oldest, "slots_busy": busy,
            "slots_idle": state.dispatcher.waiting_slots,
            "waiters": state.dispatcher.waiting,
            "pool_in_use": pool.get_size() - pool.get_idle_size(), "pool_size": pool.get_size(),
            "pool_max": pool.get_max_size()}


async def metrics(request: Request) -> Response:
    expected: str | None = request.app.state.config.metrics_token
    if expected:
        given = request.headers.get("authorization", "").partition(" ")[2].strip()
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise Unauthorized("send 'Authorization: Bearer <TAGRUN_METRICS_TOKEN>'")
    await SHARED.refresh(lambda: _read_shared(request))
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


routes = [Route("/metrics", metrics, methods=["GET"])]


class HttpMetrics:
    """Times every request, labelled by route template (bounded), method and status."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # Each series once looked up: `labels()` takes a lock and builds its key each call.
        self._series: dict[tuple[str, str, int], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)
        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope["method"] if scope["method"] in METHODS else "other"
            key = (method, template, status)
            series = self._series.get(key)
            if series is None:  # bounded: templates, methods and statuses are finite sets
                series = self._series[key] = HTTP_DURATION.labels(method, template, str(status))
            series.observe(time.perf_counter() - started)
