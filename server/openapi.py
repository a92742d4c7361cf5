"""`GET /api/openapi.json`: the OpenAPI 3.1 document, generated from the wire models the
server validates requests with (server/models.py, shared/agent_wire.py) and the response
models (server/responses.py). Nothing is written twice: the operation table below only
says which model goes with which route."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.routing import Route

from tagrun.server import models as req
from tagrun.server import responses as out
from tagrun.server.agent_tokens import SESSION
from tagrun.server.auth import WORKSPACE_ID
from tagrun.server.http import JSON
from tagrun.server.services import autoscale as autoscaling
from tagrun.server.services import jobs as job_rules
from tagrun.server.services import schedules as sched
from tagrun.server.services import secrets as secret_rules
from tagrun.server.services import settings as setting_rules
from tagrun.server.services.fleet import STATES as FLEET_STATES
from tagrun.server.store import STATES
from tagrun.server.tags import TAG_PATTERN
from tagrun.shared import agent_wire as agent
from tagrun.shared.executors import LANGUAGES
from tagrun.shared.version import __version__


@dataclass(frozen=True)
class Op:
    method: str
    path: str
    summary: str
    response: type
    status: int = 200
    body: type | None = None
    query: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> JSON schema
    auth: str = "workspace"  # none | workspace | superadmin | agent | autoscale
    headers: tuple[str, ...] = ()
    also: dict[int, str] = field(default_factory=dict)  # other success statuses -> when


class OpenApiDocument(msgspec.Struct):  # what GET /api/openapi.json answers: this document
    openapi: str
    info: dict[str, Any]
    paths: dict[str, Any]
    components: dict[str, Any]


class SettingIn(msgspec.Struct, forbid_unknown_fields=True):  # as routes/settings.py reads it
    key: str
    value: int | str  # a cap's number; a version ("1.4.0", "" for none) or an address


# Query parameters, with the bounds the routes check (server/http.py query_int/query_float).
_STRING: dict[str, Any] = {"type": "string"}
_LIMIT: dict[str, Any] = {"type": "integer", "minimum": 1, "maximum": 1000}
_ID_CURSOR: dict[str, Any] = {"type": "integer", "minimum": 1, "maximum": 2**62}
_OFFSET: dict[str, Any] = {"type": "integer", "minimum": 0, "maximum": 2**62}
_WAIT_S: dict[str, Any] = {"type": "number", "minimum": 0, "maximum": job_rules.MAX_WAIT_S}
_STATUS: dict[str, Any] = {"type": "string", "enum": list(STATES)}
_RUNS: dict[str, Any] = {"type": "integer", "minimum": 0, "maximum": 1000}
_WORKSPACE: dict[str, Any] = {"type": "string", "pattern": f"^(?:{WORKSPACE_ID.pattern})$"}
# 1-255 printable characters (routes/jobs.py); edge spaces would not survive HTTP.
_HEADERS: dict[str, dict[str, Any]] = {"Idempotency-Key": {
    "type": "string", "maxLength": 255, "pattern": "^[\\x21-\\x7e]([\\x20-\\x7e]*[\\x21-\\x7e])?$"},
    # One random value per agent process (agent_tokens.holder_key): its leases are its own.
    "Tagrun-Agent-Session": {"type": "string", "pattern": f"^(?:{SESSION.pattern})$"},
    # What the agent can do, comma-separated. `ack`: it acknowledges each job it is handed
    # (a heartbeat or log naming it) within the job's ack_s, or the job is put back in the
    # queue without using an attempt (its claim answer was lost on the way).
    "Tagrun-Agent-Features": {"type": "string", "maxLength": 200,
                              "description": "comma-separated; 'ack': see the claim's ack_s"},
    # W3C trace context (docs/tracing.md): the job's trace joins the submitter's. A value
    # that is not a version-00 traceparent is ignored, as the W3C recommendation says.
    "traceparent": {"type": "string", "description": "W3C trace context: the job's spans "
                    "join this trace", "example": "00-0af7651916cd43dd8448eb211c80319c-"
                    "b7ad6b7169203331-01"}}
_AGENT = ("Tagrun-Agent-Session",)
_CLAIMING_AGENT = ("Tagrun-Agent-Session", "Tagrun-Agent-Features")
_PATH_ID: dict[str, Any] = {"type": "integer", "minimum": 1, "maximum": 10**18 - 1}  # path_int


OPERATIONS = [
    Op("GET", "/api/health", "Liveness and version", out.Health, auth="none"),
    Op("GET", "/api/openapi.json", "This document (OpenAPI 3.1)", OpenApiDocument, auth="none"),
    Op("POST", "/api/workspaces", "Create a workspace", out.Workspace, 201, req.WorkspaceIn,
       auth="superadmin"),
    Op("GET", "/api/workspaces", "List workspaces", out.Workspaces, auth="superadmin"),
    Op("POST", "/api/tokens", "Create a workspace token, or an autoscale token (shown once)",
       out.WorkspaceToken, 201, req.WorkspaceTokenIn, auth="superadmin"),
    Op("GET", "/api/tokens", "List workspace tokens (or autoscale tokens)", out.WorkspaceTokens,
       query={"workspace": _WORKSPACE,
              "kind": {"type": "string", "enum": ["workspace", "autoscale"]}},
       auth="superadmin"),
    Op("DELETE", "/api/tokens/{id}", "Revoke a workspace or autoscale token", out.Revoked,
       auth="superadmin"),
    Op("GET", "/api/autoscale", "Per tag and agent group: queued, running, agents, slots, and "
       "desired_agents (docs/autoscaling.md)", out.Autoscale, auth="autoscale",
       query={"target_slots_per_job": {"type": "number", "exclusiveMinimum": 0,
                                       "maximum": autoscaling.MAX_TARGET_SLOTS_PER_JOB},
              "max_queue_age_s": {"type": "number", "minimum": 0,
                                  "maximum": autoscaling.MAX_QUEUE_AGE_S},
              "slots_per_agent": {"type": "integer", "minimum": 1,
                                  "maximum": autoscaling.MAX_SLOTS_PER_AGENT},
              "group": {"type": "string",
                        "pattern": agent.GROUP_PATTERN.removesuffix("\\Z") + "$"},
              "tag": {"type": "string", "pattern": f"^(?:{TAG_PATTERN.pattern})$"}}),
    Op("POST", "/api/agent_tokens", "Mint an agent token (a JWT, shown once)", out.AgentToken,
       201, agent.AgentTokenIn, auth="superadmin"),
    Op("GET", "/api/agent_tokens", "List agent tokens", out.AgentTokens,
       query={"all": {"type": "boolean"}}, auth="superadmin"),
    Op("DELETE", "/api/agent_tokens/{jti}", "Revoke an agent token", out.Revoked,
       auth="superadmin"),
    Op("GET", "/api/workers", "Agents and workers (a page, filtered), pools, tags, totals",
       out.Fleet, auth="superadmin",
       query={"state": {"type": "string", "enum": list(FLEET_STATES)}, "group": _STRING,
              "tag": _STRING, "name": _STRING, "cursor": _STRING,
              "limit": {"type": "integer", "minimum": 1, "maximum": 5000}}),
    Op("GET", "/api/workers/{name}", "One agent: its record, token, current and last 50 "
       "jobs, state history", out.AgentDetail, auth="superadmin"),
    Op("POST", "/api/workers/{name}/pause", "Pause an agent: it claims nothing new",
       out.Steered, body=req.PauseIn, auth="superadmin"),
    Op("POST", "/api/workers/{name}/resume", "Resume a paused agent", out.Steered,
       auth="superadmin"),
    Op("POST", "/api/workers/{name}/drain",
       "Drain an agent: it finishes its jobs, says goodbye and exits 0", out.Steered,
       body=req.DrainIn, auth="superadmin"),
    Op("POST", "/api/pools/{group}/pause", "Pause every agent of a group", out.Steered,
       body=req.PauseIn, auth="superadmin"),
    Op("POST", "/api/pools/{group}/resume", "Resume a paused group", out.Steered,
       auth="superadmin"),
    Op("POST", "/api/tags/{tag}/pause",
       "Pause a tag: its jobs stay queued, no agent or worker claims them", out.Steered,
       body=req.PauseIn, auth="superadmin"),
    Op("POST", "/api/tags/{tag}/resume", "Resume a paused tag", out.Steered,
       auth="superadmin"),
    Op("GET", "/api/settings", "Settings", out.SettingsOut, auth="superadmin"),
    Op("PUT", "/api/settings", "Change a setting", out.SettingsOut, body=SettingIn,
       auth="superadmin"),
    Op("POST", "/api/w/{ws}/scripts", "Deploy a new version of a script", out.Script, 201,
       req.ScriptIn),
    Op("GET", "/api/w/{ws}/scripts", "List scripts (latest versions)", out.ScriptPage,
       query={"cursor": _STRING, "limit": _LIMIT}),
    Op("GET", "/api/w/{ws}/scripts/{path}", "Read a script's latest version", out.Script),
    Op("GET", "/api/w/{ws}/secrets", "List secrets: names, scope and times, never a value",
       out.Secrets),
    Op("PUT", "/api/w/{ws}/secrets/{name}", "Set a secret (its value is never shown back)",
       out.SecretInfo, 201, secret_rules.SecretIn, also={200: "An existing secret replaced"}),
    Op("PATCH", "/api/w/{ws}/secrets/{name}", "Change which tags may use a secret",
       out.SecretInfo, body=secret_rules.ScopeIn),
    Op("DELETE", "/api/w/{ws}/secrets/{name}", "Delete a secret", out.SecretDeleted),
    Op("POST", "/api/secrets/rotate-key", "Re-encrypt every secret under the primary key",
       out.SecretsRotated, auth="superadmin"),
    Op("POST", "/api/w/{ws}/jobs", "Submit a job", out.Job, 201, req.JobIn,
       headers=("Idempotency-Key", "traceparent"),
       also={200: "The job first created with this Idempotency-Key (within 24 h)"}),
    Op("GET", "/api/w/{ws}/jobs", "List jobs, newest first", out.JobPage,
       query={"status": _STATUS, "tag": _STRING, "script": _STRING, "limit": _LIMIT,
              "cursor": _ID_CURSOR}),
    Op("POST", "/api/w/{ws}/jobs/batch", "Submit jobs (all or none)", out.JobIds, 201,
       req.BatchIn, headers=("traceparent",)),
    Op("GET", "/api/w/{ws}/jobs/{id}", "Read a job; wait_s waits for a final state", out.Job,
       query={"wait_s": _WAIT_S}),
    Op("GET", "/api/w/{ws}/jobs/{id}/logs", "Read a job's logs from an offset, and its "
       "lines (time and stream) from lines_end on", out.Logs,
       query={"offset": _OFFSET}),
    Op("POST", "/api/w/{ws}/jobs/{id}/cancel", "Cancel a job", out.Job),
    Op("POST", "/api/w/{ws}/jobs/{id}/retry", "Replay a failed or cancelled job", out.Job),
    Op("POST", "/api/w/{ws}/jobs/{id}/rerun", "Submit a new job like this one (Run again): "
       "the same script version or content, args, tag, secrets and signature", out.Job, 201,
       headers=("traceparent",)),
    Op("POST", "/api/w/{ws}/schedules", "Create a cron schedule", out.Schedule, 201,
       sched.ScheduleIn),
    Op("GET", "/api/w/{ws}/schedules", "List schedules, with next fires and last runs",
       out.SchedulePage, query={"cursor": _STRING, "limit": _LIMIT}),
    Op("GET", "/api/w/{ws}/schedules/{name}", "Read a schedule", out.Schedule,
       query={"runs": _RUNS}),
    Op("PATCH", "/api/w/{ws}/schedules/{name}", "Change a schedule", out.Schedule,
       body=sched.SchedulePatch),
    Op("DELETE", "/api/w/{ws}/schedules/{name}", "Delete a schedule (built-ins refuse)",
       out.ScheduleDeleted),
    Op("POST", "/api/agent_workers/claim", "Long-poll for jobs of the token's tags",
       agent.Claimed, body=agent.ClaimIn, auth="agent", headers=_CLAIMING_AGENT),
    Op("POST", "/api/agent_workers/heartbeat", "Extend leases; learn of cancels and losses",
       agent.HeartbeatOut, body=agent.HeartbeatIn, auth="agent", headers=_AGENT),
    Op("POST", "/api/agent_workers/release", "Give jobs back without using an attempt",
       agent.Released, body=agent.ReleaseIn, auth="agent", headers=_AGENT),
    Op("POST", "/api/agent_workers/complete", "Report several outcomes in one request",
       agent.CompletedMany, body=agent.CompleteManyIn, auth="agent", headers=_AGENT),
    Op("POST", "/api/agent_workers/goodbye", "Say the agent stops now (its last request)",
       agent.Goodbye, body=agent.GoodbyeIn, auth="agent", headers=_AGENT),
    Op("POST", "/api/w/{ws}/agent_workers/jobs/{id}/logs", "Append logs (idempotent by offset)",
       agent.LogsAck, body=agent.LogsIn, auth="agent", headers=_AGENT),
    Op("POST", "/api/w/{ws}/agent_workers/jobs/{id}/complete", "Report an attempt's outcome",
       agent.Completed, body=agent.CompleteIn, auth="agent", headers=_AGENT),
]

_ERRORS = {400: "Invalid input", 401: "Missing or invalid credentials",
           403: "Not allowed for this token", 404: "Not found",
           409: "Conflict (e.g. lease_lost, agent_name_taken, completion_conflict)",
           413: "Body too large",
           426: "This agent's version is below min_agent_version (agent_version_refused)",
           429: "Too many queued jobs (see Retry-After)",
           503: "Database unavailable (see Retry-After)"}
_SECURITY: dict[str, list[dict[str, list[str]]]] = {
    "workspace": [{"bearer": []}], "superadmin": [{"bearer": []}],
    "agent": [{"agentJWT": []}], "none": [], "autoscale": [{"bearer": []}]}


def _ref(model: type) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _parameters(op: Op) -> list[dict[str, Any]]:
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True,
         "schema": _PATH_ID if name == "id" else {"type": "string"}}
        for name in re.findall(r"\{(\w+)\}", op.path)]
    params += [{"name": n, "in": "query", "required": False, "schema": schema}
               for n, schema in op.query.items()]
    params += [{"name": h, "in": "header", "required": False,
                "schema": _HEADERS.get(h, {"type": "string"})} for h in op.headers]
    return params


def _operation(op: Op) -> dict[str, Any]:
    responses: dict[str, Any] = {str(op.status): {"description": op.summary,
                                                  **_json(_ref(op.response))}}
    for status, text in op.also.items():
        responses[str(status)] = {"description": text, **_json(_ref(op.response))}
    for status, text in _ERRORS.items():
        responses[str(status)] = {"description": text, **_json(_ref(out.ErrorOut))}
    operation: dict[str, Any] = {
        "summary": op.summary, "operationId": f"{op.method.lower()}{_op_name(op.path)}",
        "parameters": _parameters(op), "responses": responses,
        "security": _SECURITY[op.auth],
    }
    if op.body is not None:
        operation["requestBody"] = {"required": True, **_json(_ref(op.body))}
    return operation


def _op_name(path: str) -> str:
    return "".join(p.strip("{}").title().replace("_", "") for p in path.split("/")[2:])


def _ecma(node: Any) -> Any:
    """Patterns end in \\Z for Python's re; in JSON Schema (ECMA-262) `$` means the same."""
    if isinstance(node, dict):
        return {k: (v[:-2] + "$" if k == "pattern" and isinstance(v, str) and v.endswith("\\Z")
                    else _ecma(v)) for k, v in node.items()}
    if isinstance(node, list):
        return [_ecma(v) for v in node]
    return node


def _pattern(regex: re.Pattern[str]) -> str:
    return f"^(?:{regex.pattern})$"


_LANGUAGE: dict[str, Any] = {"type": "string", "enum": list(LANGUAGES)}
_OVERLAP: dict[str, Any] = {"type": "string", "enum": list(sched.OVERLAPS)}
# Rules the routes check beyond what the wire models' types say, from the same constants:
# (schema, property) -> what the property's schema becomes.
_REFINED: dict[tuple[str, str], dict[str, Any]] = {
    ("AgentTokenIn", "tags"): {"items": {"type": "string", "pattern": _pattern(TAG_PATTERN)}},
    ("ScheduleIn", "name"): {"pattern": _pattern(sched.NAME), "maxLength": 100},
    ("ScheduleIn", "overlap"): _OVERLAP,
    ("SchedulePatch", "overlap"): _OVERLAP,
    ("ScriptIn", "language"): _LANGUAGE,
    ("JobIn", "language"): {"anyOf": [_LANGUAGE, {"type": "null"}]},
    ("SettingIn", "key"): {"type": "string", "enum": sorted(setting_rules.SETTINGS)},
    ("SettingIn", "value"): {"anyOf": [{"type": "integer"}, {"type": "string"}]},
}
# Each setting's value, by its kind (services/settings.py check).
_SETTING_VALUES: dict[str, dict[str, Any]] = {
    "count": {"type": "integer", "minimum": 0, "maximum": 1_000_000},
    "version": {"type": "string", "pattern": r"^(v?[0-9][0-9A-Za-z.+-]{0,38})?$"},
    "url": {"type": "string", "pattern": r"^(https?://\S{0,490})?$"},
}
_SETTING: list[dict[str, Any]] = [
    {"properties": {"key": {"enum": sorted(k for k, s in setting_rules.SETTINGS.items()
                                           if s.kind == kind)}, "value": value}}
    for kind, value in _SETTING_VALUES.items()]
# A job names a deployed script, or else a language and its content (`identity` needs none).
_NULL: dict[str, Any] = {"type": "null"}
_JOB_SOURCE: list[dict[str, Any]] = [
    {"required": ["script"],
     "properties": {"script": {"type": "string"}, "language": _NULL, "content": _NULL}},
    {"required": ["language", "content"],
     "properties": {"script": _NULL, "language": {"type": "string"},
                    "content": {"type": "string"}}},
    {"required": ["language"],
     "properties": {"script": _NULL, "language": {"const": "identity"}}},
]


def _refine(components: dict[str, Any]) -> dict[str, Any]:
    for (name, prop), schema in _REFINED.items():
        target = components[name]["properties"][prop]
        if "anyOf" in schema or "enum" in schema:
            default = target.get("default", msgspec.UNSET)
            target.clear()
            if default is not msgspec.UNSET:
                target["default"] = default
        target.update(schema)
    components["JobIn"]["anyOf"] = _JOB_SOURCE
    components["SettingIn"]["anyOf"] = _SETTING
    return components


@cache
def document() -> dict[str, Any]:
    models = {op.response for op in OPERATIONS} | {op.body for op in OPERATIONS if op.body}
    _, components = msgspec.json.schema_components(
        sorted(models | {out.ErrorOut}, key=lambda m: m.__name__),
        ref_template="#/components/schemas/{name}")
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op)
    return {
        "openapi": "3.1.0",
        "info": {"title": "tagrun", "version": __version__,
                 "description": "A job server with HTTP-only agent workers."},
        "paths": paths,
        "components": {
            "schemas": _refine(_ecma(components)),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer",
                           "description": "Superadmin, workspace or autoscale token"},
                "agentJWT": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                             "description": "Agent token (agent routes only)"},
            },
        },
    }


async def openapi(request: Request) -> JSON:
    return JSON(document())


routes = [Route("/api/openapi.json", openapi, methods=["GET"])]
