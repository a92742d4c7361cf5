"""Jobs through the HTTP API: languages, batches, tags, listing, logs, cancel, retry, timeouts."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.processes import TagrunProcess, api_client, wait_until

UNLISTENED = "nobody-listens-here"


def new_workspace(api: httpx.Client) -> str:
    workspace = f"jobs-{uuid.uuid4().hex[:12]}"
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


def submit(api: httpx.Client, workspace: str, **body: Any) -> dict[str, Any]:
    response = api.post(f"/api/w/{workspace}/jobs", json=body)
    assert response.status_code == 201, response.text
    job: dict[str, Any] = response.json()
    return job


def get(api: httpx.Client, workspace: str, job_id: int, wait_s: float = 0) -> dict[str, Any]:
    response = api.get(f"/api/w/{workspace}/jobs/{job_id}", params={"wait_s": wait_s})
    assert response.status_code == 200, response.text
    job: dict[str, Any] = response.json()
    return job


def finish(api: httpx.Client, workspace: str, job_id: int, timeout: float = 20) -> dict[str, Any]:
    job = get(api, workspace, job_id, wait_s=timeout)
    assert job["status"] in ("succeeded", "failed", "cancelled"), job
    return job


def run(api: httpx.Client, workspace: str, **body: Any) -> dict[str, Any]:
    return finish(api, workspace, submit(api, workspace, **body)["id"])


def logs(api: httpx.Client, workspace: str, job_id: int, offset: int = 0) -> dict[str, Any]:
    response = api.get(f"/api/w/{workspace}/jobs/{job_id}/logs", params={"offset": offset})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def list_jobs(api: httpx.Client, workspace: str, **params: Any) -> dict[str, Any]:
    response = api.get(f"/api/w/{workspace}/jobs", params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


@pytest.fixture
def ws(api: httpx.Client) -> str:
    return new_workspace(api)


# --- languages and results ---------------------------------------------------------------


def test_bash_result_is_last_line_parsed_as_json(api: httpx.Client, ws: str) -> None:
    content = 'echo hello; echo "args: $(cat "$TAGRUN_ARGS_FILE")"; echo \'{"answer": 42}\''
    job = run(api, ws, language="bash", content=content, args={"x": 1})
    assert job["status"] == "succeeded", job
    assert job["result"] == {"answer": 42}
    assert job["attempt"] == 1
    assert job["error"] is None
    assert job["started_at"] and job["finished_at"]
    assert job["worker"]
    assert job["tag"] == "bash"
    output = logs(api, ws, job["id"])
    assert output["data"] == 'hello\nargs: {"x": 1}\n{"answer": 42}\n'
    assert output["done"] is True

    text = run(api, ws, language="bash", content="echo first; echo 'not json'")
    assert text["result"] == "not json"
    from_file = run(api, ws, language="bash",
                    content='echo noise; echo \'{"from": "file"}\' > "$TAGRUN_RESULT_FILE"')
    assert from_file["result"] == {"from": "file"}


def test_bash_failure_is_script_error(api: httpx.Client, ws: str) -> None:
    job = run(api, ws, language="bash", content="echo oops >&2; exit 3", max_attempts=1)
    assert job["status"] == "failed"
    assert job["error"]["kind"] == "script_error"
    assert "3" in job["error"]["message"]
    assert "oops" in logs(api, ws, job["id"])["data"]


def test_python_main_return_value_is_the_result(api: httpx.Client, ws: str) -> None:
    job = run(api, ws, language="python", args={"x": 40, "name": "é"},
              content="def main(x, name, y=2):\n    print('working')\n"
                      "    return {'sum': x + y, 'name': name}\n")
    assert job["status"] == "succeeded", job
    assert job["result"] == {"sum": 42, "name": "é"}
    assert "working" in logs(api, ws, job["id"])["data"]

    broken = run(api, ws, language="python", max_attempts=1,
                 content="def main():\n    raise ValueError('bad thing')\n")
    assert broken["status"] == "failed"
    assert broken["error"]["kind"] == "script_error"
    assert "ValueError" in logs(api, ws, broken["id"])["data"]


def test_identity_result_is_args(api: httpx.Client, ws: str) -> None:
    args = {"a": [1, 2, {"b": None}], "s": "ünïcødé ✓", "f": 1.5, "t": True, "big": 2**70}
    job = run(api, ws, language="identity", content="", args=args)
    assert job["status"] == "succeeded"
    assert job["result"] == args
    assert job["args"] == args
    assert job["tag"] == "identity"


def test_sh_job(api: httpx.Client, ws: str) -> None:
    job = run(api, ws, language="sh", content='x=21; echo $((x * 2))')
    assert job["status"] == "succeeded", job
    assert job["result"] == 42


def test_get_with_wait_returns_as_soon_as_the_job_finishes(api: httpx.Client, ws: str) -> None:
    job_id = submit(api, ws, language="bash", content="echo quick")["id"]
    started = time.monotonic()
    done = get(api, ws, job_id, wait_s=30)
    elapsed = time.monotonic() - started
    assert done["status"] == "succeeded"
    assert elapsed < 5, f"wait_s=30 took {elapsed:.1f}s for a quick job"
    # On a job that is already final, wait_s returns at once.
    started = time.monotonic()
    assert get(api, ws, job_id, wait_s=30)["status"] == "succeeded"
    assert time.monotonic() - started < 1


def test_wait_s_gives_up_at_its_deadline(api: httpx.Client, ws: str) -> None:
    job_id = submit(api, ws, language="bash", content="echo", tag=UNLISTENED)["id"]
    started = time.monotonic()
    job = get(api, ws, job_id, wait_s=1.2)
    elapsed = time.monotonic() - started
    assert job["status"] == "queued"
    assert 1.0 <= elapsed < 4
    api.post(f"/api/w/{ws}/jobs/{job_id}/cancel")


# --- batches ------------------------------------------------------------------------------


def test_batch_of_200_identity_jobs(api: httpx.Client, ws: str) -> None:
    items = [{"language": "identity", "content": "", "args": {"i": i}} for i in range(200)]
    response = api.post(f"/api/w/{ws}/jobs/batch", json={"jobs": items})
    assert response.status_code == 201, response.text
    ids = response.json()["ids"]
    assert len(ids) == 200
    assert ids == sorted(ids) and len(set(ids)) == 200

    def all_succeeded() -> bool:
        page = list_jobs(api, ws, status="succeeded", limit=1000)
        return len(page["jobs"]) == 200

    wait_until(all_succeeded, timeout=30, interval=0.2, message="200 identity jobs to succeed")
    jobs = {j["id"]: j for j in list_jobs(api, ws, limit=1000)["jobs"]}
    assert set(jobs) == set(ids)
    for i, job_id in enumerate(ids):  # the ids come back in the order of the request
        assert jobs[job_id]["args"] == {"i": i}
        assert jobs[job_id]["result"] == {"i": i}


@pytest.mark.parametrize("bad_item,index", [
    ({"language": "cobol", "content": ""}, 2),
    ({"language": "bash"}, 0),
    ({"language": "identity", "content": "", "tag": "x-$args[missing]"}, 4),
    ({"language": "identity", "content": "", "priority": 10**9}, 3),
    ({"script": "f/none"}, 1),
    ({"language": "identity", "content": "", "surprise": 1}, 4),
])
def test_batch_with_one_bad_item_creates_nothing(api: httpx.Client, ws: str,
                                                 bad_item: dict[str, Any], index: int) -> None:
    submit(api, ws, language="identity", content="")
    before = len(list_jobs(api, ws)["jobs"])
    items: list[dict[str, Any]] = [{"language": "identity", "content": "", "args": {"i": i}}
                                   for i in range(5)]
    items[index] = bad_item
    response = api.post(f"/api/w/{ws}/jobs/batch", json={"jobs": items})
    assert 400 <= response.status_code < 500
    error = assert_error(response, response.status_code)
    assert f"jobs[{index}]" in error["message"], error
    assert len(list_jobs(api, ws)["jobs"]) == before


@pytest.mark.parametrize("body", [{"jobs": []}, {"jobs": {}}, {"jobs": None}, {},
                                  {"jobs": [1]}, {"jobs": "x"}])
def test_bad_batch_shape_is_400(api: httpx.Client, ws: str, body: dict[str, Any]) -> None:
    assert_error(api.post(f"/api/w/{ws}/jobs/batch", json=body), 400)
    assert list_jobs(api, ws)["jobs"] == []


# --- tags ---------------------------------------------------------------------------------


def test_dynamic_tag_is_resolved_at_submit(api: httpx.Client, ws: str) -> None:
    job = submit(api, ws, language="bash", content="echo", tag="gpu-$args[region]-$workspace",
                 args={"region": "eu-west"})
    assert job["tag"] == f"gpu-eu-west-{ws}"
    assert job["status"] == "queued"
    nested = submit(api, ws, language="bash", content="echo", tag="n-$args[site.zone]-$args[n]",
                    args={"site": {"zone": "z1"}, "n": 7})
    assert nested["tag"] == "n-z1-7"
    assert list_jobs(api, ws, tag=f"gpu-eu-west-{ws}")["jobs"][0]["id"] == job["id"]

    # Nobody listens: still queued a moment later, then cancelled at once.
    assert get(api, ws, job["id"], wait_s=0.5)["status"] == "queued"
    for job_id in (job["id"], nested["id"]):
        cancelled = api.post(f"/api/w/{ws}/jobs/{job_id}/cancel")
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["status"] == "cancelled"
        assert get(api, ws, job_id)["status"] == "cancelled"


@pytest.mark.parametrize("tag,args", [
    ("gpu-$args[region]", {}),
    ("gpu-$args[region]", {"other": 1}),
    ("gpu-$args[site.zone]", {"site": "flat"}),
    ("gpu-$args[region]", {"region": None}),
    ("gpu-$args[region]", {"region": ["eu"]}),
    ("gpu-$args[region]", {"region": {"a": 1}}),
    ("gpu-$args[region]", {"region": ""}),
    ("gpu-$args[region]", {"region": "has space"}),
    ("$args[region]", {"region": "-dash"}),
    ("gpu-$args[]", {}),
    ("gpu-$nope", {}),
    ("gpu-$args[region", {"region": "x"}),
])
def test_unresolvable_tag_is_400(api: httpx.Client, ws: str, tag: str,
                                 args: dict[str, Any]) -> None:
    response = api.post(f"/api/w/{ws}/jobs",
                        json={"language": "bash", "content": "echo", "tag": tag, "args": args})
    assert_error(response, 400, "invalid_tag")
    assert list_jobs(api, ws)["jobs"] == []


# --- listing ------------------------------------------------------------------------------


def test_list_filters_by_status_and_tag(api: httpx.Client, ws: str) -> None:
    ok = [submit(api, ws, language="identity", content="")["id"] for _ in range(3)]
    bad = [submit(api, ws, language="bash", content="exit 1", max_attempts=1)["id"]
           for _ in range(2)]
    waiting = [submit(api, ws, language="bash", content="echo", tag=UNLISTENED)["id"]
               for _ in range(2)]
    for job_id in ok + bad:
        finish(api, ws, job_id)

    def ids(**params: Any) -> list[int]:
        return [j["id"] for j in list_jobs(api, ws, **params)["jobs"]]

    assert ids() == sorted(ok + bad + waiting, reverse=True)
    assert ids(status="succeeded") == sorted(ok, reverse=True)
    assert ids(status="failed") == sorted(bad, reverse=True)
    assert ids(status="queued") == sorted(waiting, reverse=True)
    assert ids(status="running") == []
    assert ids(tag=UNLISTENED) == sorted(waiting, reverse=True)
    assert ids(tag="identity") == sorted(ok, reverse=True)
    assert ids(tag="bash", status="failed") == sorted(bad, reverse=True)
    assert ids(tag="no-such-tag") == []
    assert all("content" not in j for j in list_jobs(api, ws)["jobs"])
    assert_error(api.get(f"/api/w/{ws}/jobs", params={"status": "done"}), 400)
    for job_id in waiting:
        api.post(f"/api/w/{ws}/jobs/{job_id}/cancel")
    assert ids(status="cancelled") == sorted(waiting, reverse=True)


def test_list_pages_with_cursor(api: httpx.Client, ws: str) -> None:
    created = [submit(api, ws, language="identity", content="", args={"n": n})["id"]
               for n in range(7)]
    seen: list[int] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 3}
        if cursor is not None:
            params["cursor"] = cursor
        page = list_jobs(api, ws, **params)
        assert len(page["jobs"]) <= 3
        seen += [j["id"] for j in page["jobs"]]
        cursor = page["next_cursor"]
        pages += 1
        if cursor is None:
            break
        assert pages < 10, "pagination does not end"
    assert seen == sorted(created, reverse=True)  # newest first, no duplicates, no gaps
    # A job submitted while paging shows up on a new first page, not in the middle.
    newer = submit(api, ws, language="identity", content="")["id"]
    assert list_jobs(api, ws, limit=1)["jobs"][0]["id"] == newer


# --- logs ---------------------------------------------------------------------------------


def test_logs_with_offsets(api: httpx.Client, ws: str) -> None:
    job = run(api, ws, language="bash", content='for i in 1 2 3 4 5; do echo "line $i ✓"; done')
    assert job["status"] == "succeeded"
    expected = "".join(f"line {i} ✓\n" for i in range(1, 6))
    everything = logs(api, ws, job["id"])
    assert {k: everything[k] for k in ("data", "offset", "done", "lines_end")} == {
        "data": expected, "offset": len(expected), "done": True, "lines_end": len(expected)}
    assert [line["text"] for line in everything["lines"]] == expected.splitlines()
    assert {line["stream"] for line in everything["lines"]} == {"stdout"}
    cut = len("line 1 ✓\nline 2 ✓\n")  # offsets count characters, not bytes
    rest = logs(api, ws, job["id"], offset=cut)
    assert rest["data"] == expected[cut:]
    assert rest["offset"] == len(expected)
    assert rest["done"] is True
    assert [line["offset"] for line in rest["lines"]] == [cut + i * len("line 3 ✓\n")
                                                           for i in range(3)]
    at_end = logs(api, ws, job["id"], offset=len(expected))
    assert at_end == {"data": "", "offset": len(expected), "done": True, "lines": [],
                      "lines_end": len(expected)}
    beyond = api.get(f"/api/w/{ws}/jobs/{job['id']}/logs", params={"offset": 10**6})
    assert beyond.status_code in (200, 400)
    if beyond.status_code == 200:
        assert beyond.json()["data"] == ""


def test_logs_of_a_queued_job_are_empty_not_done(api: httpx.Client, ws: str) -> None:
    job = submit(api, ws, language="bash", content="echo", tag=UNLISTENED)
    assert logs(api, ws, job["id"]) == {"data": "", "offset": 0, "done": False, "lines": [],
                                        "lines_end": 0}
    api.post(f"/api/w/{ws}/jobs/{job['id']}/cancel")
    assert logs(api, ws, job["id"])["done"] is True


def test_logs_stream_while_running(api: httpx.Client, ws: str, tmp_path: Path) -> None:
    go = tmp_path / "go"
    job_id = submit(api, ws, language="bash", content=(
        f'echo started; while [ ! -f "{go}" ]; do sleep 0.05; done; echo finished'))["id"]
    first = wait_until(lambda: (lambda lg: lg if "started" in lg["data"] else None)(
        logs(api, ws, job_id)), timeout=10, message="'started' in the logs")
    assert first["done"] is False
    assert first["data"] == "started\n"
    assert get(api, ws, job_id)["status"] == "running"
    go.touch()
    done = finish(api, ws, job_id)
    assert done["status"] == "succeeded"
    assert done["result"] == "finished"
    rest = logs(api, ws, job_id, offset=first["offset"])
    assert rest["data"] == "finished\n"
    assert rest["done"] is True


# --- cancel -------------------------------------------------------------------------------


def test_cancel_queued_job_ends_it_at_once(api: httpx.Client, ws: str) -> None:
    job = submit(api, ws, language="bash", content="echo never", tag=UNLISTENED)
    response = api.post(f"/api/w/{ws}/jobs/{job['id']}/cancel")
    assert response.status_code == 200, response.text
    cancelled = response.json()
    assert cancelled["status"] == "cancelled"
    assert cancelled["error"]["kind"] == "cancelled"
    assert cancelled["finished_at"]
    assert cancelled["attempt"] == 0
    again = get(api, ws, job["id"])
    assert again["status"] == "cancelled"
    assert_error(api.post(f"/api/w/{ws}/jobs/{job['id']}/cancel"), 409)


def test_cancel_running_job(api: httpx.Client, ws: str) -> None:
    job_id = submit(api, ws, language="bash", content="echo sleeping; sleep 300")["id"]
    wait_until(lambda: "sleeping" in logs(api, ws, job_id)["data"], timeout=10,
               message="the job to start")
    response = api.post(f"/api/w/{ws}/jobs/{job_id}/cancel")
    assert response.status_code == 200, response.text
    assert response.json()["cancel_requested"] is True
    started = time.monotonic()
    job = get(api, ws, job_id, wait_s=30)
    elapsed = time.monotonic() - started
    assert job["status"] == "cancelled", job
    assert job["error"]["kind"] == "cancelled"
    # The README promises "killed at its worker's next heartbeat"; a user expects seconds.
    assert elapsed < 5, f"a running job took {elapsed:.1f}s to be cancelled"


def test_cancel_finished_job_is_409(api: httpx.Client, ws: str) -> None:
    job = run(api, ws, language="identity", content="")
    error = assert_error(api.post(f"/api/w/{ws}/jobs/{job['id']}/cancel"), 409)
    assert "succeeded" in error["message"]
    assert get(api, ws, job["id"])["status"] == "succeeded"


def test_cancel_or_retry_unknown_job_is_404(api: httpx.Client, ws: str) -> None:
    assert_error(api.post(f"/api/w/{ws}/jobs/987654321/cancel"), 404, "job_not_found")
    assert_error(api.post(f"/api/w/{ws}/jobs/987654321/retry"), 404, "job_not_found")
    assert_error(api.get(f"/api/w/{ws}/jobs/987654321"), 404, "job_not_found")
    assert_error(api.get(f"/api/w/{ws}/jobs/987654321/logs"), 404, "job_not_found")


# --- retry, timeouts, attempts ------------------------------------------------------------


def test_retry_failed_job_runs_it_again(api: httpx.Client, ws: str, tmp_path: Path) -> None:
    marker = tmp_path / "ran-once"
    content = (f'if [ -f "{marker}" ]; then echo \'{{"second": true}}\'; '
               f'else touch "{marker}"; echo first run; exit 1; fi')
    job = run(api, ws, language="bash", content=content, max_attempts=1)
    assert job["status"] == "failed"
    assert job["attempt"] == 1
    response = api.post(f"/api/w/{ws}/jobs/{job['id']}/retry")
    assert response.status_code == 200, response.text
    requeued = response.json()
    assert requeued["status"] in ("queued", "running", "succeeded")
    assert requeued["error"] is None
    done = finish(api, ws, job["id"])
    assert done["status"] == "succeeded", done
    assert done["result"] == {"second": True}
    assert done["attempt"] == 1  # fresh attempts
    assert done["error"] is None
    assert "first run" in logs(api, ws, job["id"])["data"]  # earlier output is kept


def test_retry_cancelled_job(api: httpx.Client, ws: str) -> None:
    job = submit(api, ws, language="identity", content="", args={"k": 1}, tag=UNLISTENED)
    api.post(f"/api/w/{ws}/jobs/{job['id']}/cancel")
    response = api.post(f"/api/w/{ws}/jobs/{job['id']}/retry")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "queued"
    assert response.json()["error"] is None
    api.post(f"/api/w/{ws}/jobs/{job['id']}/cancel")


# --- run again ----------------------------------------------------------------------------

COPIED = ("script", "script_version", "language", "content", "args", "tag", "priority",
          "timeout_s", "max_attempts", "lease_s", "secrets", "signature")


def test_run_again_submits_a_new_job_like_the_first(api: httpx.Client, ws: str) -> None:
    job = run(api, ws, language="bash", content='echo "run $TAGRUN_JOB_ID"; echo \'{"n": 1}\'',
              args={"a": [1, "b"]}, priority=3, timeout_s=30, max_attempts=2)
    response = api.post(f"/api/w/{ws}/jobs/{job['id']}/rerun")
    assert response.status_code == 201, response.text
    copy = response.json()
    assert copy["id"] > job["id"]
    assert {k: copy[k] for k in COPIED} == {k: job[k] for k in COPIED}
    done = finish(api, ws, copy["id"])
    assert (done["status"], done["result"]) == ("succeeded", {"n": 1})
    assert f"run {copy['id']}" in logs(api, ws, copy["id"])["data"]
    assert get(api, ws, job["id"]) == job  # the first is left as it was


def test_run_again_of_a_script_job_runs_the_version_it_ran(api: httpx.Client, ws: str) -> None:
    for version in ("v1", "v2"):
        response = api.post(f"/api/w/{ws}/scripts", json={
            "path": "f/versioned", "language": "bash", "content": f"echo {version}"})
        assert response.status_code == 201, response.text
        if version == "v1":
            first = run(api, ws, script="f/versioned")
    response = api.post(f"/api/w/{ws}/jobs/{first['id']}/rerun")
    assert response.status_code == 201, response.text
    done = finish(api, ws, response.json()["id"])
    assert (done["script"], done["script_version"], done["result"]) == ("f/versioned", 1, "v1")


def test_run_again_of_another_workspaces_job_is_404(
    api: httpx.Client, ws: str, server: TagrunProcess
) -> None:
    other = new_workspace(api)
    theirs = run(api, other, language="identity", content="", args={"theirs": True})
    token = api.post("/api/tokens", json={"workspace": ws}).json()["token"]
    with api_client(server.url, token) as mine:
        assert_error(mine.post(f"/api/w/{ws}/jobs/{theirs['id']}/rerun"), 404, "job_not_found")
        assert mine.post(f"/api/w/{other}/jobs/{theirs['id']}/rerun").status_code == 403
        assert_error(mine.post(f"/api/w/{ws}/jobs/987654321/rerun"), 404, "job_not_found")
        assert mine.post(f"/api/w/{ws}/jobs/abc/rerun").status_code in (400, 404)
    assert list_jobs(api, ws)["jobs"] == []
    assert [j["id"] for j in list_jobs(api, other)["jobs"]] == [theirs["id"]]


def test_retry_succeeded_or_queued_job_is_409(api: httpx.Client, ws: str) -> None:
    job = run(api, ws, language="identity", content="", args={"x": 1})
    error = assert_error(api.post(f"/api/w/{ws}/jobs/{job['id']}/retry"), 409)
    assert "succeeded" in error["message"]
    assert get(api, ws, job["id"]) == {**job}
    queued = submit(api, ws, language="bash", content="echo", tag=UNLISTENED)
    assert_error(api.post(f"/api/w/{ws}/jobs/{queued['id']}/retry"), 409)
    api.post(f"/api/w/{ws}/jobs/{queued['id']}/cancel")


def test_timeout_kills_the_job(api: httpx.Client, ws: str) -> None:
    started = time.monotonic()
    job = run(api, ws, language="bash", content="echo going; sleep 30", timeout_s=1,
              max_attempts=1)
    assert time.monotonic() - started < 10
    assert job["status"] == "failed"
    assert job["error"]["kind"] == "timeout"
    assert job["timeout_s"] == 1
    assert "going" in logs(api, ws, job["id"])["data"]


def test_failing_job_is_attempted_max_attempts_times(api: httpx.Client, ws: str) -> None:
    job_id = submit(api, ws, language="bash", content="echo trying; exit 1", max_attempts=2)["id"]

    def second_attempt_failed() -> dict[str, Any] | None:
        job = get(api, ws, job_id, wait_s=2)
        return job if job["status"] == "failed" else None

    job = wait_until(second_attempt_failed, timeout=20, message="the second attempt to fail")
    assert job["attempt"] == 2
    assert job["max_attempts"] == 2
    assert job["error"]["kind"] == "script_error"
    output = logs(api, ws, job_id)["data"]
    assert output.count("trying") == 2
    assert "attempt 2" in output


def test_attempts_show_the_same_times_as_the_job(api: httpx.Client, ws: str) -> None:
    job = run(api, ws, language="bash", content="echo ok")
    [attempt] = job["attempts"]
    assert (attempt["attempt"], attempt["status"], attempt["worker"]) == (1, "succeeded",
                                                                         job["worker"])
    assert (attempt["started_at"], attempt["finished_at"]) == (job["started_at"],
                                                               job["finished_at"])
