"""OpenTelemetry traces, read from a real OTLP/HTTP receiver: a job submitted under a
client's trace and run on an agent (the Python agent and the agent executable) or a direct
worker is one span tree (submit → queue wait, run → completion), its process gets the run
span as TRACEPARENT, and with tracing off nothing is exported while the client's trace
context still reaches the job."""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

import pytest

from tests.e2e.test_agent_binary import BINARY
from tests.support.otlp import OtlpReceiver, ReceivedSpan
from tests.support.processes import (
    AgentProcess,
    agent_token,
    api_client,
    finished,
    require_agent_binary,
)

SPANS = {"tagrun.submit", "tagrun.queue_wait", "tagrun.run", "tagrun.complete"}
SERVER_KIND, CONSUMER_KIND = 2, 5  # OTLP's SpanKind numbers


def tracing_env(collector: OtlpReceiver) -> dict[str, str]:
    # Spans leave every 100 ms rather than every 5 s: the test reads them sooner.
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100"}


def client_context() -> tuple[str, str, str]:
    """A submitter's own trace: (trace id, span id, traceparent header)."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, span_id, f"00-{trace_id}-{span_id}-01"


def submit(url: str, traceparent: str, **body: object) -> int:
    with api_client(url) as api:
        answer = api.post("/api/w/default/jobs", headers={"traceparent": traceparent},
                          json={"language": "bash",
                                "content": 'echo "TP=$TRACEPARENT"', **body})
        assert answer.status_code == 201, answer.text
        return int(answer.json()["id"])


def logs_of(url: str, job_id: int) -> str:
    with api_client(url) as api:
        return str(api.get(f"/api/w/default/jobs/{job_id}/logs").json()["data"])


def assert_one_tree(spans: dict[str, ReceivedSpan], trace_id: str, parent_id: str,
                    job_id: int, holder_service: str) -> None:
    submit_span, wait, run, complete = (spans[n] for n in (
        "tagrun.submit", "tagrun.queue_wait", "tagrun.run", "tagrun.complete"))
    assert {s.trace_id for s in spans.values()} == {trace_id}
    assert submit_span.parent_id == parent_id and submit_span.service == "tagrun-server"
    assert submit_span.kind == SERVER_KIND
    assert wait.parent_id == submit_span.span_id and wait.service == "tagrun-server"
    assert wait.start_ns <= wait.end_ns
    assert run.parent_id == submit_span.span_id and run.service == holder_service
    assert run.kind == CONSUMER_KIND
    assert complete.parent_id == run.span_id and complete.service == "tagrun-server"
    for span in (wait, run, complete):
        assert span.attributes["tagrun.job.id"] == job_id
        assert span.attributes["tagrun.job.attempt"] == 1
        assert span.attributes["tagrun.workspace"] == "default"
        assert span.attributes["tagrun.job.tag"] == "traced"


@pytest.mark.parametrize("agent", ["python", "binary"])
def test_a_job_run_on_an_agent_is_one_trace(
    agent: str, start_process, database_url: str, tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    command = [str(require_agent_binary(BINARY))] if agent == "binary" else None
    with OtlpReceiver() as collector:
        server = start_process("server", database_url,
                               env=tracing_env(collector)).wait_healthy()
        with api_client(server.url) as api:
            token = agent_token(api, ["traced"])
        runner = AgentProcess(server.url, token, tmp_path, name=f"tracer-{agent}",
                              env=tracing_env(collector), command=command)
        try:
            trace_id, span_id, traceparent = client_context()
            job_id = submit(server.url, traceparent, tag="traced")
            with api_client(server.url) as api:
                assert finished(api, job_id)["status"] == "succeeded"
            spans = collector.wait_for(SPANS, **{"tagrun.job.id": job_id})
        finally:
            runner.kill()
    assert_one_tree(spans, trace_id, span_id, job_id, "tagrun-agent")
    run = spans["tagrun.run"]
    assert run.attributes["tagrun.worker"] == f"tracer-{agent}"
    assert spans["tagrun.complete"].attributes["tagrun.job.status"] == "succeeded"
    # The job's process was handed its run span: its own spans would join the trace.
    assert f"TP=00-{trace_id}-{run.span_id}-01" in logs_of(server.url, job_id)


def test_a_failed_job_on_a_direct_worker_is_one_trace_marked_failed(
    start_process, database_url: str,  # type: ignore[no-untyped-def]
) -> None:
    with OtlpReceiver() as collector:
        server = start_process("standalone", database_url, env={
            **tracing_env(collector), "WORKER_TAGS": "traced"}).wait_healthy()
        trace_id, span_id, traceparent = client_context()
        job_id = submit(server.url, traceparent, tag="traced", max_attempts=1,
                        content='echo "TP=$TRACEPARENT"; exit 3')
        with api_client(server.url) as api:
            assert finished(api, job_id)["status"] == "failed"
        spans = collector.wait_for(SPANS, **{"tagrun.job.id": job_id})
    assert_one_tree(spans, trace_id, span_id, job_id, "tagrun-server")
    run, complete = spans["tagrun.run"], spans["tagrun.complete"]
    assert run.status_code == 2 and complete.status_code == 2  # error, both
    assert complete.attributes["tagrun.job.status"] == "failed"
    assert f"TP=00-{trace_id}-{run.span_id}-01" in logs_of(server.url, job_id)


def test_a_scheduled_job_is_a_trace_rooted_at_its_fire(
    start_process, database_url: str,  # type: ignore[no-untyped-def]
) -> None:
    with OtlpReceiver() as collector:
        server = start_process("standalone", database_url, env={
            **tracing_env(collector), "WORKER_TAGS": "traced"}).wait_healthy()
        with api_client(server.url) as api:
            assert api.post("/api/w/default/scripts", json={
                "path": "f/traced", "language": "bash", "tag": "traced",
                "content": "echo fired"}).status_code == 201
            assert api.post("/api/w/default/schedules", json={
                "name": "every-second", "script": "f/traced",
                "cron": "* * * * * *"}).status_code == 201
            fired = collector.wait_for({"tagrun.schedule_fire"}, **{
                "tagrun.schedule": "every-second", "tagrun.schedule.outcome": "job"})
            job_id = fired["tagrun.schedule_fire"].attributes["tagrun.job.id"]
            assert api.patch("/api/w/default/schedules/every-second",
                             json={"enabled": False}).status_code == 200
            assert finished(api, job_id)["status"] == "succeeded"
        spans = collector.wait_for(SPANS - {"tagrun.submit"}, **{"tagrun.job.id": job_id})
    root = fired["tagrun.schedule_fire"]
    assert root.parent_id == "" and root.attributes["tagrun.workspace"] == "default"
    assert spans["tagrun.queue_wait"].parent_id == root.span_id
    assert spans["tagrun.run"].parent_id == root.span_id
    assert spans["tagrun.complete"].parent_id == spans["tagrun.run"].span_id
    assert {s.trace_id for s in spans.values()} == {root.trace_id}


def test_with_tracing_off_nothing_is_exported_and_the_client_trace_reaches_the_job(
    start_process, database_url: str, tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    with OtlpReceiver() as collector:
        # The collector listens, but nothing asks for traces: none may arrive.
        off = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"{collector.endpoint}/v1/traces",
               "TAGRUN_OTEL": "0"}
        server = start_process("server", database_url, env=off).wait_healthy()
        with api_client(server.url) as api:
            token = agent_token(api, ["traced"])
        runner = AgentProcess(server.url, token, tmp_path, name="untraced", env=off)
        try:
            _, _, traceparent = client_context()
            job_id = submit(server.url, traceparent, tag="traced")
            with api_client(server.url) as api:
                assert finished(api, job_id)["status"] == "succeeded"
            # Passed on unchanged: a job that traces joins its submitter's trace.
            assert f"TP={traceparent}" in logs_of(server.url, job_id)
            # A malformed traceparent is ignored, as the W3C recommendation says.
            other = submit(server.url, "00-zz-not-a-trace", tag="traced")
            with api_client(server.url) as api:
                assert finished(api, other)["status"] == "succeeded"
            assert "TP=\n" in logs_of(server.url, other)
        finally:
            runner.kill()
        server.stop()
        assert collector.spans() == []
    assert "tracing.enabled" not in server.log_text() + runner.log_text()


@pytest.mark.parametrize("command", ["server", "agent"])
def test_a_bad_tagrun_otel_value_stops_the_start_naming_it(
    command: str, tmp_path: Path, database_url: str,
) -> None:
    import subprocess

    env = {k: v for k, v in os.environ.items() if not k.startswith(("AGENT_", "TAGRUN_"))}
    env.update({"TAGRUN_OTEL": "maybe", "AGENT_TOKEN": "x", "DATABASE_URL": database_url,
                "BASE_INTERNAL_URL": "http://127.0.0.1:9", "TAGRUN_DATA_DIR": str(tmp_path)})
    argv = [sys.executable, "-m", "tagrun.server", "start", "--mode", "server", "--port", "0"] \
        if command == "server" else [str(Path(sys.executable).parent / "tagrun-agent")]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "TAGRUN_OTEL='maybe' must be 1 (trace) or 0 (do not)" in done.stderr
