from __future__ import annotations

import httpx


def test_health_needs_no_token(server) -> None:
    response = httpx.get(f"{server.url}/api/health")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


def test_bash_job_runs_to_success(api: httpx.Client) -> None:
    job = api.post("/api/w/default/jobs", json={"language": "bash", "content": "echo hi"}).json()
    done = api.get(f"/api/w/default/jobs/{job['id']}", params={"wait_s": 10}).json()
    assert done["status"] == "succeeded"
    assert done["result"] == "hi"
