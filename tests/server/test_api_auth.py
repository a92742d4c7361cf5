"""Who may call what: bearer tokens, workspace tokens, revocation, expiry, workspaces."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.support.processes import SUPERADMIN, TagrunProcess, api_client, wait_until


def new_workspace(api: httpx.Client) -> str:
    workspace = f"auth-{uuid.uuid4().hex[:12]}"
    response = api.post("/api/workspaces", json={"id": workspace})
    assert response.status_code == 201, response.text
    return workspace


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert isinstance(error["code"], str) and error["code"]
    assert isinstance(error["message"], str) and error["message"]
    if code is not None:
        assert error["code"] == code, error
    return dict(error)


def new_token(api: httpx.Client, workspace: str, **extra: Any) -> dict[str, Any]:
    response = api.post("/api/tokens", json={"workspace": workspace, "label": "ci", **extra})
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    assert isinstance(created["token"], str) and len(created["token"]) >= 20
    return created


@pytest.fixture(autouse=True)
def never_leak_superadmin(api: httpx.Client) -> Iterator[None]:
    """Every response the superadmin client receives is checked for the superadmin token."""

    def check(response: httpx.Response) -> None:
        response.read()
        assert SUPERADMIN not in response.text, f"{response.request.url} leaked the token"

    api.event_hooks["response"].append(check)
    yield


def test_health_needs_no_token(server: TagrunProcess) -> None:
    response = httpx.get(f"{server.url}/api/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert isinstance(body["version"], str) and body["version"]


@pytest.mark.parametrize("headers", [
    {},
    {"Authorization": ""},
    {"Authorization": "Bearer"},
    {"Authorization": "Bearer  two words"},
    {"Authorization": "Basic dXNlcjpwYXNz"},
    {"Authorization": SUPERADMIN},  # no scheme
    {"Authorization": f"Token {SUPERADMIN}"},
    {"Authorization": "Bearer not-a-real-token"},
    {"Authorization": f"Bearer {SUPERADMIN}x"},
    {"Authorization": f"Bearer {SUPERADMIN[:-1]}"},
    {"Authorization": "Bearer tr_" + "A" * 5000},
], ids=["missing", "empty", "scheme-only", "spaces", "basic", "no-scheme", "wrong-scheme",
        "unknown", "suffixed", "truncated", "huge"])
@pytest.mark.parametrize("method,path", [
    ("GET", "/api/w/default/jobs"),
    ("POST", "/api/w/default/jobs"),
    ("GET", "/api/w/default/jobs/1"),
    ("GET", "/api/w/default/scripts"),
    ("GET", "/api/workspaces"),
    ("POST", "/api/tokens"),
    ("DELETE", "/api/tokens/1"),
])
def test_bad_credentials_are_401_json(server: TagrunProcess, headers: dict[str, str],
                                      method: str, path: str) -> None:
    response = httpx.request(method, f"{server.url}{path}", headers=headers,
                             json={"language": "identity", "content": ""})
    error = assert_error(response, 401, "unauthorized")
    assert SUPERADMIN not in response.text
    assert "Bearer" in error["message"] or "token" in error["message"]


def test_401_does_not_run_the_request(server: TagrunProcess, api: httpx.Client) -> None:
    workspace = new_workspace(api)
    response = httpx.post(f"{server.url}/api/w/{workspace}/jobs",
                          headers={"Authorization": "Bearer nope"},
                          json={"language": "identity", "content": ""})
    assert_error(response, 401)
    assert api.get(f"/api/w/{workspace}/jobs").json()["jobs"] == []


def test_workspace_token_shown_once_and_never_listed(api: httpx.Client) -> None:
    workspace = new_workspace(api)
    created = new_token(api, workspace)
    assert created["workspace"] == workspace
    assert created["label"] == "ci"
    assert created["revoked"] is False
    assert created["expires_at"] is None

    for params in ({"workspace": workspace}, {}):
        listed = api.get("/api/tokens", params=params)
        assert listed.status_code == 200
        assert created["token"] not in listed.text
        tokens = listed.json()["tokens"]
        [mine] = [t for t in tokens if t["id"] == created["id"]]
        assert "token" not in mine
        assert mine["label"] == "ci" and mine["workspace"] == workspace
    only_mine = api.get("/api/tokens", params={"workspace": workspace}).json()["tokens"]
    assert [t["id"] for t in only_mine] == [created["id"]]


def test_workspace_token_acts_in_its_workspace_only(server: TagrunProcess,
                                                    api: httpx.Client) -> None:
    mine, other = new_workspace(api), new_workspace(api)
    token = new_token(api, mine)["token"]
    with api_client(server.url, token) as client:
        submitted = client.post(f"/api/w/{mine}/jobs",
                                json={"language": "identity", "content": "", "args": {"a": 1}})
        assert submitted.status_code == 201, submitted.text
        job_id = submitted.json()["id"]
        done = client.get(f"/api/w/{mine}/jobs/{job_id}", params={"wait_s": 10}).json()
        assert done["status"] == "succeeded" and done["result"] == {"a": 1}
        deployed = client.post(f"/api/w/{mine}/scripts",
                               json={"path": "f/x", "language": "identity", "content": ""})
        assert deployed.status_code == 201, deployed.text
        assert client.get(f"/api/w/{mine}/scripts/f/x").status_code == 200

        # Another workspace, existing or not, and the default one: forbidden.
        for workspace in (other, "default", "no-such-workspace"):
            assert_error(client.get(f"/api/w/{workspace}/jobs"), 403, "forbidden")
            assert_error(client.post(f"/api/w/{workspace}/jobs",
                                     json={"language": "identity", "content": ""}), 403)
            assert_error(client.get(f"/api/w/{workspace}/jobs/{job_id}"), 403)
            assert_error(client.post(f"/api/w/{workspace}/jobs/{job_id}/cancel"), 403)
            assert_error(client.get(f"/api/w/{workspace}/scripts"), 403)
        # Superadmin routes: forbidden, and nothing happens.
        assert_error(client.get("/api/workspaces"), 403, "forbidden")
        assert_error(client.post("/api/workspaces", json={"id": f"{mine}-x"}), 403)
        assert_error(client.get("/api/tokens"), 403)
        assert_error(client.post("/api/tokens", json={"workspace": mine}), 403)
        assert_error(client.delete("/api/tokens/1"), 403)
    assert f"{mine}-x" not in [w["id"] for w in api.get("/api/workspaces").json()["workspaces"]]
    assert api.get(f"/api/w/{other}/jobs").json()["jobs"] == []
    assert len(api.get("/api/tokens", params={"workspace": mine}).json()["tokens"]) == 1


def test_jobs_of_other_workspaces_are_invisible(api: httpx.Client) -> None:
    a, b = new_workspace(api), new_workspace(api)
    job = api.post(f"/api/w/{b}/jobs", json={"language": "identity", "content": ""}).json()
    assert_error(api.get(f"/api/w/{a}/jobs/{job['id']}"), 404, "job_not_found")
    assert_error(api.get(f"/api/w/{a}/jobs/{job['id']}/logs"), 404)
    assert_error(api.post(f"/api/w/{a}/jobs/{job['id']}/retry"), 404)
    assert api.get(f"/api/w/{a}/jobs").json()["jobs"] == []


def test_cancel_through_another_workspace_does_not_touch_the_job(api: httpx.Client) -> None:
    """A job queued (delayed) in B, cancelled by id through A: 404, and B's job still runs."""
    a, b = new_workspace(api), new_workspace(api)
    soon = datetime.now(UTC) + timedelta(seconds=1.5)
    job = api.post(f"/api/w/{b}/jobs", json={
        "language": "identity", "content": "", "args": {"k": "v"}, "run_at": soon.isoformat(),
    })
    assert job.status_code == 201, job.text
    job_id = job.json()["id"]
    assert_error(api.post(f"/api/w/{a}/jobs/{job_id}/cancel"), 404, "job_not_found")
    done = api.get(f"/api/w/{b}/jobs/{job_id}", params={"wait_s": 15}).json()
    assert done["status"] == "succeeded", done
    assert done["result"] == {"k": "v"}


def test_revoked_token_stops_working(server: TagrunProcess, api: httpx.Client) -> None:
    workspace = new_workspace(api)
    created = new_token(api, workspace)
    with api_client(server.url, created["token"]) as client:
        assert client.get(f"/api/w/{workspace}/jobs").status_code == 200
        revoked = api.delete(f"/api/tokens/{created['id']}")
        assert revoked.status_code == 200, revoked.text
        wait_until(lambda: client.get(f"/api/w/{workspace}/jobs").status_code == 401,
                   timeout=6, message="the revoked token to be refused")
        assert_error(client.get(f"/api/w/{workspace}/jobs"), 401, "unauthorized")
        assert_error(client.post(f"/api/w/{workspace}/jobs",
                                 json={"language": "identity", "content": ""}), 401)
    listed = api.get("/api/tokens", params={"workspace": workspace}).json()["tokens"]
    assert [t["revoked"] for t in listed] == [True]
    # Revoking again is harmless; an unknown id is a 404.
    assert api.delete(f"/api/tokens/{created['id']}").status_code == 200
    assert_error(api.delete("/api/tokens/999999999"), 404)


def test_superadmin_token_cannot_be_revoked(api: httpx.Client) -> None:
    # Token 1 is the superadmin's (the first row of the server's fresh database): it is not a
    # workspace token, so DELETE must not disable it.
    assert_error(api.delete("/api/tokens/1"), 404)
    assert api.get("/api/workspaces").status_code == 200


def test_expired_token_stops_working(server: TagrunProcess, api: httpx.Client) -> None:
    workspace = new_workspace(api)
    created = new_token(api, workspace, expires_in_s=1)
    assert created["expires_at"] is not None
    with api_client(server.url, created["token"]) as client:
        wait_until(lambda: client.get(f"/api/w/{workspace}/jobs").status_code == 401,
                   timeout=6, message="the expired token to be refused")
        assert_error(client.get(f"/api/w/{workspace}/jobs"), 401, "unauthorized")


@pytest.mark.parametrize("expires_in_s", [0, -1, 1.5, "60", None, True])
def test_bad_expiry_is_400(api: httpx.Client, expires_in_s: object) -> None:
    body: dict[str, Any] = {"workspace": "default", "expires_in_s": expires_in_s}
    if expires_in_s is None:
        body = {"workspace": "default", "expires_in_s": "soon"}
    assert_error(api.post("/api/tokens", json=body), 400, "invalid_input")


def test_token_for_unknown_workspace_is_404(api: httpx.Client) -> None:
    assert_error(api.post("/api/tokens", json={"workspace": "no-such-ws-42"}), 404,
                 "workspace_not_found")


def test_unknown_workspace_is_404(api: httpx.Client) -> None:
    for method, path in [("GET", "/api/w/no-such-ws/jobs"), ("GET", "/api/w/no-such-ws/jobs/1"),
                         ("GET", "/api/w/no-such-ws/scripts"),
                         ("GET", "/api/w/no-such-ws/scripts/a/b"),
                         ("POST", "/api/w/no-such-ws/jobs/1/cancel"),
                         ("GET", "/api/w/NOT_VALID/jobs")]:
        response = api.request(method, path)
        assert_error(response, 404, "workspace_not_found")
    response = api.post("/api/w/no-such-ws/jobs", json={"language": "identity", "content": ""})
    assert_error(response, 404, "workspace_not_found")


def test_create_workspace(api: httpx.Client) -> None:
    workspace = f"ws-{uuid.uuid4().hex[:10]}"
    created = api.post("/api/workspaces", json={"id": workspace})
    assert created.status_code == 201
    assert created.json()["id"] == workspace
    assert workspace in [w["id"] for w in api.get("/api/workspaces").json()["workspaces"]]
    assert api.get(f"/api/w/{workspace}/jobs").json() == {"jobs": [], "next_cursor": None}
    error = assert_error(api.post("/api/workspaces", json={"id": workspace}), 409)
    assert workspace in error["message"]
    assert_error(api.post("/api/workspaces", json={"id": "default"}), 409)


@pytest.mark.parametrize("workspace_id", [
    "", "-starts-with-dash", "Upper", "has_underscore", "has space", "a" * 64, "é", "a/b",
    "a.b", "../x", "abc\n", "abc\n\n", 42, None, ["a"],
])
def test_invalid_workspace_id_is_400(api: httpx.Client, workspace_id: object) -> None:
    assert_error(api.post("/api/workspaces", json={"id": workspace_id}), 400, "invalid_input")
    listed = [w["id"] for w in api.get("/api/workspaces").json()["workspaces"]]
    assert workspace_id not in listed


def test_longest_workspace_id_is_fine(api: httpx.Client) -> None:
    workspace = "w" + uuid.uuid4().hex[:8] + "-" * 20 + "z" * 34
    assert len(workspace) == 63
    assert api.post("/api/workspaces", json={"id": workspace}).status_code == 201
    assert api.get(f"/api/w/{workspace}/jobs").status_code == 200


def test_superadmin_token_never_logged(server: TagrunProcess, api: httpx.Client) -> None:
    api.get("/api/workspaces")
    httpx.get(f"{server.url}/api/w/default/jobs", headers={"Authorization": "Bearer wrong"})
    log = server.log_text()
    assert log  # the server does log
    assert SUPERADMIN not in log
