"""The OpenAPI document, checked against the running server: schemathesis generates requests
from it for every route (user routes with the superadmin token, agent routes with an agent
token) and checks that no answer is a 5xx and every answer conforms to the document."""

from __future__ import annotations

import os
from typing import Any

import httpx
import msgspec
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from tagrun.shared import responses as out
from tests.support.processes import SUPERADMIN, TagrunProcess, api_client

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]
EXAMPLES = int(os.environ.get("TAGRUN_SCHEMATHESIS_EXAMPLES", "25"))


@pytest.fixture(scope="module")
def agent_token(server: TagrunProcess) -> str:
    with api_client(server.url) as api:
        return str(api.post("/api/agent_tokens", json={
            "group": "schemathesis", "tags": ["schemathesis-only"]}).json()["token"])


def test_every_route_conforms_and_never_fails(server: TagrunProcess, agent_token: str) -> None:
    schema = schemathesis.openapi.from_url(f"{server.url}/api/openapi.json")
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 25
    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                  phases=[Phase.explicit, Phase.generate],
                  suppress_health_check=list(HealthCheck))
        def check(case: Any) -> None:
            call(case, server, agent_token)
        try:
            check()
        except Exception as exc:  # noqa: BLE001 - gather every route's failure, then report
            found = getattr(exc, "exceptions", [exc])
            failures.append(f"{operation.method.upper()} {operation.path}: "
                            + " | ".join(str(e)[:1500] for e in found))
    assert not failures, "\n\n".join(failures)


def call(case: Any, server: TagrunProcess, agent_token: str) -> None:
    if case.path == "/api/agent_workers/claim" and isinstance(case.body, dict):
        wait_s = case.body.get("wait_s", 25)  # 25 s when absent: keep long-polls short here
        if isinstance(wait_s, int | float) and not isinstance(wait_s, bool):
            case.body["wait_s"] = min(wait_s, 0.2)
    if "ws" in (case.path_parameters or {}):
        case.path_parameters["ws"] = "default"  # reach the real handlers, not just 404s
    token = agent_token if "/agent_workers" in case.path else SUPERADMIN
    if case.method == "DELETE":
        token = "not-the-superadmin"  # never revoke the suite's tokens: check the 401 path
    case.call_and_validate(base_url=server.url, checks=CHECKS,
                           headers={"Authorization": f"Bearer {token}"})


def test_document_lists_every_api_route(server: TagrunProcess) -> None:
    document = httpx.get(f"{server.url}/api/openapi.json").json()
    assert document["openapi"].startswith("3.1")
    assert "/api/w/{ws}/jobs" in document["paths"]
    assert "/api/agent_workers/claim" in document["paths"]
    assert set(document["paths"]["/api/w/{ws}/jobs"]) == {"get", "post"}


def test_real_responses_decode_into_the_documented_models(
    api: httpx.Client, agent_token: str, server: TagrunProcess
) -> None:
    job = api.post("/api/w/default/jobs", json={"language": "bash", "content": "echo hi"})
    msgspec.convert(job.json(), out.Job)
    done = api.get(f"/api/w/default/jobs/{job.json()['id']}", params={"wait_s": 10}).json()
    msgspec.convert(done, out.Job)
    msgspec.convert(api.get("/api/w/default/jobs").json(), out.JobPage)
    msgspec.convert(api.get(f"/api/w/default/jobs/{done['id']}/logs").json(), out.Logs)
    msgspec.convert(api.get("/api/workers").json(), out.Fleet)
    msgspec.convert(api.get("/api/settings").json(), out.SettingsOut)
    msgspec.convert(api.get("/api/agent_tokens").json(), out.AgentTokens)
    msgspec.convert(api.get("/api/tokens").json(), out.WorkspaceTokens)
    schedules = msgspec.convert(api.get("/api/w/default/schedules").json(), out.SchedulePage)
    assert any(s.builtin for s in schedules.schedules)  # the maintenance schedules
    msgspec.convert(api.get("/api/w/default/schedules/tagrun.job-retention").json(),
                    out.Schedule)
    with api_client(server.url, agent_token) as agent:
        claimed = agent.post("/api/agent_workers/claim", json={"name": "doc", "wait_s": 0})
        msgspec.convert(claimed.json(), out.Claimed)
