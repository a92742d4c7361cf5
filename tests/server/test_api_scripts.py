"""Scripts: deploy, versions, listing, and jobs that run a script."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest


def new_workspace(api: httpx.Client) -> str:
    workspace = f"scripts-{uuid.uuid4().hex[:12]}"
    response = api.post("/api/workspaces", json={"id": workspace})
    assert response.status_code == 201, response.text
    return workspace


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert isinstance(error["code"], str) and error["code"]
    assert isinstance(error["message"], str) and error["message"]
    if code is not None:
        assert error["code"] == code, error
    return dict(error)


def deploy(api: httpx.Client, workspace: str, path: str, content: str = "echo hi",
           language: str = "bash", **extra: Any) -> dict[str, Any]:
    response = api.post(f"/api/w/{workspace}/scripts",
                        json={"path": path, "language": language, "content": content, **extra})
    assert response.status_code == 201, response.text
    script: dict[str, Any] = response.json()
    return script


def run(api: httpx.Client, workspace: str, **body: Any) -> dict[str, Any]:
    response = api.post(f"/api/w/{workspace}/jobs", json=body)
    assert response.status_code == 201, response.text
    job_id = response.json()["id"]
    done: dict[str, Any] = api.get(f"/api/w/{workspace}/jobs/{job_id}",
                                   params={"wait_s": 20}).json()
    assert done["status"] in ("succeeded", "failed"), done
    return done


def test_deploy_and_redeploy_make_versions(api: httpx.Client) -> None:
    workspace = new_workspace(api)
    first = deploy(api, workspace, "f/etl/daily", "echo one", timeout_s=30, max_attempts=2)
    assert first["version"] == 1
    assert first["path"] == "f/etl/daily"
    assert first["language"] == "bash"
    assert first["content"] == "echo one"
    assert first["timeout_s"] == 30
    assert first["max_attempts"] == 2
    second = deploy(api, workspace, "f/etl/daily", "echo two", language="sh")
    assert second["version"] == 2

    latest = api.get(f"/api/w/{workspace}/scripts/f/etl/daily")
    assert latest.status_code == 200
    body = latest.json()
    assert body["version"] == 2
    assert body["content"] == "echo two"
    assert body["language"] == "sh"
    assert body["max_attempts"] == 3  # a new version does not inherit the old settings
    assert body["timeout_s"] is None

    # Another workspace's script at the same path is independent.
    other = new_workspace(api)
    assert deploy(api, other, "f/etl/daily")["version"] == 1
    assert_error(api.get(f"/api/w/{other}/scripts/f/etl/nightly"), 404, "script_not_found")


def test_list_shows_latest_versions_with_pagination(api: httpx.Client) -> None:
    workspace = new_workspace(api)
    paths = [f"f/p{i}" for i in range(7)]
    for path in paths:
        deploy(api, workspace, path, f"echo {path}")
    deploy(api, workspace, "f/p3", "echo newer")
    deploy(api, workspace, "f/p3", "echo newest")

    everything = api.get(f"/api/w/{workspace}/scripts").json()
    assert [s["path"] for s in everything["scripts"]] == paths
    assert everything["next_cursor"] is None
    assert {s["path"]: s["version"] for s in everything["scripts"]}["f/p3"] == 3
    assert all("content" not in s for s in everything["scripts"])

    seen: list[dict[str, Any]] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 3}
        if cursor is not None:
            params["cursor"] = cursor
        page = api.get(f"/api/w/{workspace}/scripts", params=params)
        assert page.status_code == 200, page.text
        body = page.json()
        assert len(body["scripts"]) <= 3
        seen += body["scripts"]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
        assert pages < 10
    assert [s["path"] for s in seen] == paths  # no duplicates, no gaps, in path order
    assert [s["version"] for s in seen] == [1, 1, 1, 3, 1, 1, 1]


def test_job_runs_the_script_and_records_its_version(api: httpx.Client) -> None:
    workspace = new_workspace(api)
    deploy(api, workspace, "f/greet", 'echo "version one"')
    deploy(api, workspace, "f/greet", 'echo "version two"')
    job = run(api, workspace, script="f/greet")
    assert job["status"] == "succeeded"
    assert job["result"] == "version two"
    assert job["script"] == "f/greet"
    assert job["script_version"] == 2
    assert job["language"] == "bash"

    # Redeploying does not change an earlier job's version (or what it ran).
    deploy(api, workspace, "f/greet", 'echo "version three"')
    again = api.get(f"/api/w/{workspace}/jobs/{job['id']}").json()
    assert again["script_version"] == 2
    assert again["result"] == "version two"
    assert again["content"] == 'echo "version two"'
    newer = run(api, workspace, script="f/greet")
    assert newer["script_version"] == 3
    assert newer["result"] == "version three"

    listed = api.get(f"/api/w/{workspace}/jobs", params={"script": "f/greet"}).json()["jobs"]
    assert [(j["id"], j["script_version"]) for j in listed] == [
        (newer["id"], 3), (job["id"], 2)]


def test_python_script_gets_args(api: httpx.Client) -> None:
    workspace = new_workspace(api)
    deploy(api, workspace, "f/add", "def main(x, y=2):\n    return {'sum': x + y}\n",
           language="python")
    job = run(api, workspace, script="f/add", args={"x": 40})
    assert job["status"] == "succeeded", job
    assert job["result"] == {"sum": 42}


def test_script_settings_are_job_defaults(api: httpx.Client) -> None:
    workspace = new_workspace(api)
    deploy(api, workspace, "f/flaky", "exit 1", timeout_s=5, max_attempts=1)
    job = run(api, workspace, script="f/flaky")
    assert job["status"] == "failed"
    assert job["max_attempts"] == 1
    assert job["timeout_s"] == 5
    assert job["attempt"] == 1
    assert job["error"]["kind"] == "script_error"
    # The job request may override them.
    response = api.post(f"/api/w/{workspace}/jobs",
                        json={"script": "f/flaky", "timeout_s": 9, "max_attempts": 2,
                              "tag": "nobody-listens"})
    assert response.status_code == 201
    assert response.json()["timeout_s"] == 9
    assert response.json()["max_attempts"] == 2
    api.post(f"/api/w/{workspace}/jobs/{response.json()['id']}/cancel")


def test_script_tag_template_is_resolved_per_job(api: httpx.Client) -> None:
    workspace = new_workspace(api)
    deploy(api, workspace, "f/regional", "echo hi", tag="site-$args[region]-$workspace")
    response = api.post(f"/api/w/{workspace}/jobs",
                        json={"script": "f/regional", "args": {"region": "eu"}})
    assert response.status_code == 201, response.text
    job = response.json()
    assert job["tag"] == f"site-eu-{workspace}"
    assert job["status"] == "queued"  # no worker listens to that tag
    other = api.post(f"/api/w/{workspace}/jobs",
                     json={"script": "f/regional", "args": {"region": "us"}}).json()
    assert other["tag"] == f"site-us-{workspace}"
    # An explicit tag wins over the script's.
    explicit = api.post(f"/api/w/{workspace}/jobs", json={"script": "f/regional", "tag": "bash"})
    assert explicit.status_code == 201
    assert explicit.json()["tag"] == "bash"
    # A job without the argument the script's tag needs is refused, and nothing is created.
    error = assert_error(api.post(f"/api/w/{workspace}/jobs", json={"script": "f/regional"}),
                         400, "invalid_tag")
    assert "region" in error["message"]
    for job_id in (job["id"], other["id"]):
        cancelled = api.post(f"/api/w/{workspace}/jobs/{job_id}/cancel").json()
        assert cancelled["status"] == "cancelled"
    assert len(api.get(f"/api/w/{workspace}/jobs").json()["jobs"]) == 3


@pytest.mark.parametrize("tag", ["has space", "$nope", "x$args", "-leading-dash", "a" * 300,
                                 "", "$args[]"])
def test_bad_script_tag_is_400(api: httpx.Client, tag: str) -> None:
    workspace = new_workspace(api)
    response = api.post(f"/api/w/{workspace}/scripts",
                        json={"path": "f/x", "language": "bash", "content": "", "tag": tag})
    assert_error(response, 400)
    assert_error(api.get(f"/api/w/{workspace}/scripts/f/x"), 404, "script_not_found")


@pytest.mark.parametrize("language", ["cobol", "Bash", "", "python3", " bash"])
def test_unknown_language_is_400(api: httpx.Client, language: str) -> None:
    workspace = new_workspace(api)
    error = assert_error(api.post(f"/api/w/{workspace}/scripts",
                                  json={"path": "f/x", "language": language, "content": ""}),
                         400, "unknown_language")
    assert "bash" in error["message"]  # says which languages exist
    assert api.get(f"/api/w/{workspace}/scripts").json()["scripts"] == []


@pytest.mark.parametrize("path", ["", "/abs", "f/", "f//x", "../etc/passwd", "f/../x", "F/Upper",
                                  "f/has space", "f/é", "a" * 256, "f/x\n", ".", "f/.."])
def test_bad_path_is_400(api: httpx.Client, path: str) -> None:
    workspace = new_workspace(api)
    assert_error(api.post(f"/api/w/{workspace}/scripts",
                          json={"path": path, "language": "bash", "content": ""}),
                 400, "invalid_input")
    assert api.get(f"/api/w/{workspace}/scripts").json()["scripts"] == []


def test_unknown_script_in_a_job_is_404(api: httpx.Client) -> None:
    workspace = new_workspace(api)
    error = assert_error(api.post(f"/api/w/{workspace}/jobs", json={"script": "f/missing"}),
                         404, "script_not_found")
    assert "f/missing" in error["message"]
    deploy(api, workspace, "f/present", "echo ok")
    batch = api.post(f"/api/w/{workspace}/jobs/batch",
                     json={"jobs": [{"script": "f/present"}, {"script": "f/missing"}]})
    error = assert_error(batch, 404, "script_not_found")
    assert "jobs[1]" in error["message"]
    assert api.get(f"/api/w/{workspace}/jobs").json()["jobs"] == []
    # A script of another workspace is not found either.
    other = new_workspace(api)
    assert_error(api.post(f"/api/w/{other}/jobs", json={"script": "f/present"}), 404,
                 "script_not_found")


def test_script_and_inline_code_together_is_400(api: httpx.Client) -> None:
    workspace = new_workspace(api)
    deploy(api, workspace, "f/x")
    assert_error(api.post(f"/api/w/{workspace}/jobs",
                          json={"script": "f/x", "language": "bash", "content": "echo"}), 400)
    assert api.get(f"/api/w/{workspace}/jobs").json()["jobs"] == []


def test_unknown_script_path_on_get_is_404(api: httpx.Client) -> None:
    workspace = new_workspace(api)
    for path in ("f/none", "f/none/deeper", "%C3%A9", "f%2Fx", "a" * 300):
        assert_error(api.get(f"/api/w/{workspace}/scripts/{path}"), 404, "script_not_found")
