"""OpenTelemetry traces of jobs (docs/tracing.md), off unless asked for.

A job's trace: `tagrun.submit` on the server (child of the submitter's `traceparent`, if it
sent one), `tagrun.queue_wait` from when the job was due to when a holder claimed it,
`tagrun.run` on the agent or direct worker that ran it (across the HTTP hop: the claim answer
carries the job's `traceparent`), and `tagrun.complete` on the server as the outcome is
recorded (child of the run, whose `traceparent` comes back with the outcome). The job itself
gets `TRACEPARENT` in its environment, so spans it makes join the trace.

Tracing is on when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._TRACES_ENDPOINT`) is set, or
`TAGRUN_OTEL=1`; `TAGRUN_OTEL=0` or `OTEL_SDK_DISABLED=true` turn it off. Spans go by OTLP
over HTTP, configured by the standard OTEL_* variables. The SDK and exporter are imported only
then: a process that does not trace never loads them (the agent binary starts as fast).
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Mapping
from typing import Any

from tagrun.shared.agent_wire import TRACEPARENT_PATTERN
from tagrun.shared.version import __version__

ENABLE_VARIABLE = "TAGRUN_OTEL"
ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
TRACEPARENT = re.compile(TRACEPARENT_PATTERN)
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")

log = logging.getLogger("tagrun.tracing")


class TracingConfigError(ValueError):
    """TAGRUN_OTEL has a value that is neither on nor off."""


def wanted(env: Mapping[str, str] = os.environ) -> bool:
    """Whether this process should trace, from its environment."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    flag = env.get(ENABLE_VARIABLE)
    if flag is not None:
        value = flag.strip().lower()
        if value in _TRUE:
            return True
        if value not in _FALSE:
            raise TracingConfigError(
                f"{ENABLE_VARIABLE}={flag!r} must be 1 (trace) or 0 (do not)")
        if value:
            return False
    return any(env.get(v, "").strip() for v in ENDPOINT_VARIABLES)


def valid_traceparent(value: str | None) -> str | None:
    """`value` if it is a W3C traceparent this process can pass on, else None."""
    if value is None:
        return None
    value = value.strip().lower()
    return value if TRACEPARENT.match(value) else None


class Tracer:
    """The process's tracer: spans of jobs, exported by OTLP over HTTP in batches."""

    def __init__(self, service: str) -> None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME")
                                    or service, "service.version": __version__})
        self._provider = TracerProvider(resource=resource)
        self._provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        self._tracer = self._provider.get_tracer("tagrun", __version__)
        self._propagator = TraceContextTextMapPropagator()

    def start(self, name: str, parent: str | None, attributes: Mapping[str, Any], *,
              kind: str = "internal", start_ns: int | None = None) -> Span:
        """A span started now (or at `start_ns`, ns since the epoch), a child of the span
        `parent` names (a traceparent), else a new trace's root."""
        from opentelemetry.trace import SpanKind

        context = self._propagator.extract({"traceparent": parent}) if parent else None
        span = self._tracer.start_span(
            name, context=context, kind=getattr(SpanKind, kind.upper()),
            attributes=dict(attributes), start_time=start_ns)
        return Span(span)

    def record(self, name: str, parent: str | None, attributes: Mapping[str, Any], *,
               began_s_ago: float, kind: str = "internal") -> None:
        """A span that has already happened: from `began_s_ago` seconds ago to now."""
        now = time.time_ns()
        began = now - int(max(began_s_ago, 0.0) * 1e9)
        self.start(name, parent, attributes, kind=kind, start_ns=began).end()

    def shutdown(self) -> None:
        """Send the spans still waiting (a few seconds at most), then stop."""
        self._provider.shutdown()


class Span:
    """A started span: `traceparent` names it to children elsewhere."""

    def __init__(self, span: Any) -> None:
        self._span = span
        context = span.get_span_context()
        self.traceparent = (f"00-{context.trace_id:032x}-{context.span_id:016x}-"
                            f"{int(context.trace_flags):02x}")

    def set(self, key: str, value: Any) -> None:
        self._span.set_attribute(key, value)

    def fail(self, message: str) -> None:
        from opentelemetry.trace import Status, StatusCode

        self._span.set_status(Status(StatusCode.ERROR, message))

    def end(self) -> None:
        self._span.end()


def job_attributes(job_id: int, workspace: str, tag: str, attempt: int | None = None
                   ) -> dict[str, Any]:
    attributes: dict[str, Any] = {"tagrun.job.id": job_id, "tagrun.workspace": workspace,
                                  "tagrun.job.tag": tag}
    if attempt is not None:
        attributes["tagrun.job.attempt"] = attempt
    return attributes


_tracer: Tracer | None = None


def setup(service: str) -> Tracer | None:
    """This process's tracer when its environment asks for traces (None: it does not).
    Raises TracingConfigError for a TAGRUN_OTEL that is neither on nor off."""
    global _tracer
    if _tracer is None and wanted():
        _tracer = Tracer(service)
        log.info("tracing.enabled", extra={"service": service})
    return _tracer


def tracer() -> Tracer | None:
    """The process's tracer, if setup() made one."""
    return _tracer


def shutdown() -> None:
    global _tracer
    if _tracer is not None:
        _tracer.shutdown()
        _tracer = None
