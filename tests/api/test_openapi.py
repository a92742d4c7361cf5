"""The OpenAPI document, checked against the running server: schemathesis generates requests
from it for every route (user routes with the superadmin token, agent routes with an agent
token) and checks that no answer is a 5xx and every answer conforms to the document."""

from __future__ import annotations

import os
import re
from typing import Any

import httpx
import msgspec
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    positive_data_acceptance,
    response_schema_conformance,
    status_code_conformance,
)

from tagrun.server import responses as out
from tagrun.shared import agent_wire as wire
from tests.support.processes import SUPERADMIN, TagrunProcess, api_client

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]
EXAMPLES = int(os.environ.get("TAGRUN_SCHEMATHESIS_EXAMPLES", "25"))


@pytest.fixture(scope="module")
def agent_token(server: TagrunProcess) -> str:
    with api_client(server.url) as api:
        return str(api.post("/api/agent_tokens", json={
            "group": "schemathesis", "tags": ["schemathesis-only"]}).json()["token"])


# Reproducible: the same cases every run (raise EXAMPLES locally to search wider).
FUZZED = settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))


def test_every_route_conforms_and_never_fails(server: TagrunProcess, agent_token: str) -> None:
    schema = schemathesis.openapi.from_url(f"{server.url}/api/openapi.json")
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 25
    for operation in operations:
        @given(case=operation.as_strategy())
        @FUZZED
        def check(case: Any) -> None:
            call(case, server, agent_token)
        try:
            check()
        except Exception as exc:  # noqa: BLE001 - gather every route's failure, then report
            found = getattr(exc, "exceptions", [exc])
            failures.append(f"{operation.method.upper()} {operation.path}: "
                            + " | ".join(str(e)[:1500] for e in found))
    reset_settings(server)  # PUT /api/settings was sent valid keys and values
    assert not failures, "\n\n".join(failures)


def reset_settings(server: TagrunProcess) -> None:
    with api_client(server.url) as api:
        for key in ("task_max_concurrent", "task_inline_max_concurrent"):
            assert api.put("/api/settings", json={"key": key, "value": 0}).status_code == 200


# Routes whose every input rule the document states (bounds of query parameters, enums,
# patterns), so that what it calls valid the server accepts. Others check more than a
# schema can say (a cron expression, a time zone, a tag template's placeholders).
EXACT = {("GET", "/api/w/{ws}/jobs"), ("GET", "/api/w/{ws}/jobs/{id}"),
         ("GET", "/api/w/{ws}/jobs/{id}/logs"), ("GET", "/api/w/{ws}/scripts"),
         ("GET", "/api/w/{ws}/schedules"), ("GET", "/api/w/{ws}/schedules/{name}"),
         ("PUT", "/api/settings"), ("POST", "/api/agent_tokens"), ("GET", "/api/agent_tokens"),
         ("GET", "/api/tokens"), ("GET", "/api/autoscale")}


def test_what_the_document_calls_valid_is_accepted(server: TagrunProcess) -> None:
    schema = schemathesis.openapi.from_url(f"{server.url}/api/openapi.json")
    operations = [op for op in (r.ok() for r in schema.get_all_operations())
                  if (op.method.upper(), op.path) in EXACT]
    assert len(operations) == len(EXACT)
    failures: list[str] = []
    try:
        for operation in operations:
            @given(case=operation.as_strategy())
            @FUZZED
            def check(case: Any) -> None:
                if "ws" in (case.path_parameters or {}):
                    case.path_parameters["ws"] = "default"
                if case.query and "wait_s" in case.query:
                    case.query["wait_s"] = 0  # the bound is documented; do not wait here
                case.body = integral(case.body)
                case.call_and_validate(base_url=server.url, checks=[positive_data_acceptance],
                                       headers={"Authorization": f"Bearer {SUPERADMIN}"})
            try:
                check()
            except Exception as exc:  # noqa: BLE001 - gather every route's failure
                found = getattr(exc, "exceptions", [exc])
                failures.append(f"{operation.method.upper()} {operation.path}: "
                                + " | ".join(str(e)[:1500] for e in found))
    finally:
        reset_settings(server)
    assert not failures, "\n\n".join(failures)


def integral(value: Any) -> Any:
    """JSON Schema's `integer` also matches 760.0; the server wants an integer literal."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
        return int(value)
    if isinstance(value, dict):
        return {k: integral(v) for k, v in value.items()}
    if isinstance(value, list):
        return [integral(v) for v in value]
    return value


def test_query_bounds_and_job_sources_are_in_the_document(server: TagrunProcess) -> None:
    document = httpx.get(f"{server.url}/api/openapi.json").json()
    params = {p["name"]: p["schema"] for p in document["paths"]["/api/w/{ws}/jobs"]["get"][
        "parameters"]}
    assert params["limit"] == {"type": "integer", "minimum": 1, "maximum": 1000}
    assert params["status"]["enum"] == ["queued", "running", "succeeded", "failed", "cancelled"]
    wait = document["paths"]["/api/w/{ws}/jobs/{id}"]["get"]["parameters"][-1]["schema"]
    assert wait == {"type": "number", "minimum": 0, "maximum": 60}
    job_in = document["components"]["schemas"]["JobIn"]
    assert [branch["required"] for branch in job_in["anyOf"]] == [
        ["script"], ["language", "content"], ["language"]]
    tags = document["components"]["schemas"]["AgentTokenIn"]["properties"]["tags"]
    assert tags["items"]["pattern"].startswith("^")
    assert httpx.post(f"{server.url}/api/w/default/jobs", json={},
                      headers={"Authorization": f"Bearer {SUPERADMIN}"}).status_code == 400


def test_a_wrong_method_is_405_naming_the_allowed_ones(server: TagrunProcess) -> None:
    answer = httpx.request("TRACE", f"{server.url}/api/health")
    assert answer.status_code == 405
    assert answer.json()["error"]["code"] == "method_not_allowed"
    assert "GET" in answer.headers["allow"]
    answer = httpx.delete(f"{server.url}/api/w/default/jobs",
                          headers={"Authorization": f"Bearer {SUPERADMIN}"})
    assert answer.status_code == 405
    assert set(answer.headers["allow"].replace(" ", "").split(",")) >= {"GET", "POST"}


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
        msgspec.convert(claimed.json(), wire.Claimed)


def test_every_api_route_served_is_documented_and_every_documented_one_is_served() -> None:
    from starlette.routing import Route

    from tagrun.server.app import ROUTES
    from tagrun.server.openapi import document

    served = {(method, re.sub(r":\w+}", "}", route.path)) for route in ROUTES  # {p:path}
              if isinstance(route, Route) and route.path.startswith("/api/")
              for method in route.methods or () if method != "HEAD"}
    documented = {(method.upper(), path) for path, operations in document()["paths"].items()
                  for method in operations}
    assert served - documented == set(), "served but not in the OpenAPI document"
    assert documented - served == set(), "in the OpenAPI document but not served"
