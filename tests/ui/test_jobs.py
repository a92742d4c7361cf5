"""Job pages in the browser: hostile output stays text, the dead letter replays, lists page."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import httpx
from playwright.sync_api import Page, expect

from tests.ui.conftest import MAX_LOG_CHARS, expect_console_errors, sign_in, submit

HOSTILE = ('<script>window.__pwned = "script"</script>'
           '<img src=x onerror="window.__pwned = \'img\'">')


def finished(api: httpx.Client, job_id: int) -> dict[str, object]:
    job: dict[str, object] = api.get(f"/api/w/default/jobs/{job_id}",
                                     params={"wait_s": 30}).json()
    assert job["status"] in ("succeeded", "failed", "cancelled"), job
    return job


def test_hostile_logs_args_and_results_run_no_script(page: Page, api: httpx.Client) -> None:
    job = submit(api, language="python", args={"name": HOSTILE}, content=(
        "def main(name):\n    print(name)\n    return {'html': name}\n"))
    failing = submit(api, language="python", args={"name": HOSTILE}, max_attempts=1,
                     content="def main(name):\n    print(name)\n    raise ValueError(name)\n")
    assert finished(api, job["id"])["status"] == "succeeded"
    assert finished(api, failing["id"])["status"] == "failed"
    sign_in(page)

    page.goto(f"/w/default/jobs/{job['id']}")
    expect(page.locator("[data-logs]")).to_contain_text(HOSTILE)
    expect(page.locator("[data-job-args]")).to_contain_text("<script>window.__pwned")
    expect(page.locator("[data-job-result]")).to_contain_text("onerror=")
    expect(page.locator("[data-log-state]")).to_have_text("complete")
    assert page.locator("main img, main script").count() == 0
    assert page.evaluate("window.__pwned") is None

    page.goto(f"/w/default/jobs/{failing['id']}")
    expect(page.locator("[data-logs]")).to_contain_text(HOSTILE)
    expect(page.locator("#job-summary .job-error")).to_contain_text("<img src=x")
    page.goto("/w/default/dead-letter")
    expect(page.locator(f"tr[data-job='{failing['id']}']")).to_contain_text("<script>")
    page.goto("/w/default/jobs")
    expect(page.locator(f"tr[data-job='{job['id']}']")).to_be_visible()
    assert page.locator("main img, main script").count() == 0
    assert page.evaluate("window.__pwned") is None

    # Even markup that got into the page could run nothing: the CSP forbids inline code.
    expect_console_errors(page, "Executing inline event handler violates")
    page.evaluate("""() => {
        window.__violations = [];
        document.addEventListener('securitypolicyviolation',
                                  (e) => window.__violations.push(e.violatedDirective));
        document.body.insertAdjacentHTML('beforeend',
            '<img id="bad" src="data:," onerror="window.__pwned = 1">');
    }""")
    page.wait_for_function("window.__violations.length > 0")
    assert page.evaluate("window.__pwned") is None


def test_a_truncated_log_says_so_above_it(page: Page, api: httpx.Client) -> None:
    long = submit(api, language="bash",
                  content=f"head -c {MAX_LOG_CHARS + 10} /dev/zero | tr '\\0' x; echo")
    short = submit(api, language="bash", content="echo short")
    assert finished(api, long["id"])["log_truncated"] is True
    assert finished(api, short["id"])["log_truncated"] is False
    sign_in(page)
    page.goto(f"/w/default/jobs/{long['id']}")
    expect(page.locator("[data-log-truncated]")).to_contain_text("This log is incomplete")
    expect(page.locator("[data-logs]")).to_contain_text("log truncated here")
    page.goto(f"/w/default/jobs/{short['id']}")
    expect(page.locator("[data-logs]")).to_contain_text("short")
    assert page.locator("[data-log-truncated]").count() == 0


def test_a_dead_lettered_job_is_replayed(page: Page, api: httpx.Client, tmp_path: Path) -> None:
    fixed = tmp_path / "fixed"
    job = submit(api, language="bash", max_attempts=1, content=(
        f'if [ -f {fixed} ]; then echo "works now"; else echo "boom: not fixed" >&2; exit 3; fi'))
    assert finished(api, job["id"])["status"] == "failed"
    sign_in(page)
    page.goto("/w/default/dead-letter")
    row = page.locator(f"tr[data-job='{job['id']}']")
    expect(row).to_contain_text("script_error")
    fixed.touch()
    row.get_by_role("button", name="Replay").click()
    expect(row).to_have_count(0)  # queued again: out of the dead letter
    page.goto(f"/w/default/jobs/{job['id']}")
    expect(page.locator("#job-actions .badge").first).to_have_text("succeeded")
    expect(page.locator("[data-logs]")).to_contain_text("works now")
    expect(page.locator("#attempts tbody tr")).to_have_count(2)
    expect(page.locator("#attempts tbody tr").first).to_contain_text("failed")


def test_the_job_list_filters_and_pages_newest_first(page: Page, api: httpx.Client) -> None:
    tag = f"list-{uuid.uuid4().hex[:6]}"
    created = api.post("/api/w/default/jobs/batch", json={"jobs": [
        {"language": "identity", "tag": tag, "args": {"n": n}} for n in range(55)]})
    assert created.status_code == 201, created.text
    ids = created.json()["ids"]
    sign_in(page)
    page.goto("/w/default/jobs")
    page.fill("input[name=tag]", tag)
    page.get_by_role("button", name="Filter").click()
    rows = page.locator("#job-list tbody tr")
    expect(rows).to_have_count(50)
    expect(rows.first).to_have_attribute("data-job", str(max(ids)))
    page.locator("[data-older]").click()
    expect(rows).to_have_count(5)
    expect(rows.last).to_have_attribute("data-job", str(min(ids)))
    expect(page).to_have_url(re.compile(rf"tag={tag}.*cursor=|cursor=.*tag={tag}"))
    page.get_by_role("link", name="← Newest").click()
    expect(rows).to_have_count(50)
    page.select_option("select[name=status]", "failed")
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("#job-list .empty")).to_have_text("No job matches.")
    for job_id in ids:  # nothing serves the tag: leave no queue behind for the other tests
        assert api.post(f"/api/w/default/jobs/{job_id}/cancel").status_code == 200


def test_short_addresses_open_the_home_workspace_pages(page: Page) -> None:
    sign_in(page)
    for short, heading in [("/jobs", "Jobs"), ("/dead-letter", "Dead letter"),
                           ("/schedules", "Schedules")]:
        page.goto(short)
        expect(page).to_have_url(re.compile(rf"/w/default{short}$"))
        expect(page.locator("h1")).to_contain_text(heading)


def test_a_log_with_lost_chunks_says_so_above_it(page: Page, api: httpx.Client) -> None:
    """An agent reports two log chunks the server refused: the job page says the log has
    gaps and how many, above the log; a whole log has no such note."""
    tag = f"gaps-{uuid.uuid4().hex[:8]}"
    token = api.post("/api/agent_tokens", json={"group": "ui", "tags": [tag]}).json()["token"]
    job = submit(api, language="bash", content="echo hi", tag=tag)
    whole = submit(api, language="bash", content="echo whole")
    with httpx.Client(base_url=str(api.base_url),
                      headers={"Authorization": f"Bearer {token}"}) as agent:
        [claimed] = agent.post("/api/agent_workers/claim",
                               json={"name": "gappy", "wait_s": 10}).json()["jobs"]
        assert claimed["id"] == job["id"]
        done = agent.post(f"/api/w/default/agent_workers/jobs/{job['id']}/complete", json={
            "name": "gappy", "attempt": 1, "status": "succeeded", "result": None,
            "log_chunks_lost": 2})
        assert done.status_code == 200, done.text
    assert finished(api, job["id"])["log_chunks_lost"] == 2
    assert finished(api, whole["id"])["log_chunks_lost"] == 0
    sign_in(page)
    page.goto(f"/w/default/jobs/{job['id']}")
    expect(page.locator("[data-log-chunks-lost]")).to_contain_text(
        "the server refused 2 of its chunks")
    page.goto(f"/w/default/jobs/{whole['id']}")
    expect(page.locator("[data-logs]")).to_contain_text("whole")
    assert page.locator("[data-log-chunks-lost]").count() == 0


def test_log_lines_show_their_time_and_stream_and_follow_a_line_being_written(
    page: Page, api: httpx.Client, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    job = submit(api, language="bash", content=(
        f"echo first; printf progress; while [ ! -f {gate} ]; do sleep 0.05; done\n"
        "echo ' 100%'; echo err-line >&2"))
    sign_in(page)
    page.goto(f"/w/default/jobs/{job['id']}")
    logs = page.locator("[data-logs]")
    expect(logs.locator(".log-line.stdout", has_text="first")).to_have_count(1)
    expect(logs.locator(".log-line.partial")).to_have_text("progress")  # shown as it is so far
    gate.touch()
    expect(page.locator("[data-log-state]")).to_have_text("complete")
    expect(logs.locator(".log-line.partial")).to_have_count(0)
    expect(logs.locator(".log-line.stdout", has_text="progress 100%")).to_have_count(1)
    err = logs.locator(".log-line.stderr")
    expect(err).to_have_text(re.compile(r"^\d\d:\d\d:\d\derr-line$"))
    expect(err.locator("time")).to_have_attribute("title", re.compile(r"local · .* UTC$"))
    tint = err.evaluate("e => getComputedStyle(e).backgroundColor")
    plain = logs.locator(".log-line.stdout").first.evaluate(
        "e => getComputedStyle(e).backgroundColor")
    assert tint != plain, (tint, plain)


def test_the_job_list_refreshes_itself_and_says_why_a_job_waits(
    page: Page, api: httpx.Client, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    running = submit(api, language="bash",
                     content=f"while [ ! -f {gate} ]; do sleep 0.05; done; echo done")
    waiting = submit(api, language="identity", tag=f"nobody-{uuid.uuid4().hex[:6]}")
    sign_in(page)
    page.goto("/w/default/jobs")
    page.evaluate("window.__same_page = true")
    row = page.locator(f"tr[data-job='{running['id']}']")
    expect(row.locator(".badge")).to_have_text("running")
    expect(page.locator(f"tr[data-job='{waiting['id']}'] [data-pending-code]")).to_have_attribute(
        "data-pending-code", "no_live_worker")
    gate.touch()
    expect(row.locator(".badge")).to_have_text("succeeded")  # without a reload
    # Paused, it waits; ticked again, it refreshes at once.
    page.locator("[data-auto-refresh]").uncheck()
    later = submit(api, language="identity", args={"later": True})
    assert finished(api, later["id"])["status"] == "succeeded"
    page.locator("[data-auto-refresh]").check()
    expect(page.locator(f"tr[data-job='{later['id']}'] .badge")).to_have_text("succeeded")
    assert page.evaluate("window.__same_page") is True
    assert api.post(f"/api/w/default/jobs/{waiting['id']}/cancel").status_code == 200


def test_run_again_submits_a_new_job_like_a_finished_one_and_opens_it(
    page: Page, api: httpx.Client
) -> None:
    job = submit(api, language="python", args={"word": "again"}, priority=2,
                 content="def main(word):\n    return word.upper()\n")
    assert finished(api, job["id"])["status"] == "succeeded"
    sign_in(page)
    page.goto(f"/w/default/jobs/{job['id']}")
    page.get_by_role("button", name="Run again").click()
    page.wait_for_url(lambda url: re.search(r"/w/default/jobs/\d+$", url) is not None
                      and not url.endswith(f"/jobs/{job['id']}"))
    new_id = int(page.url.rsplit("/", 1)[1])
    assert new_id > job["id"]
    expect(page.locator("h1")).to_contain_text(f"#{new_id}")
    expect(page.locator("#job-actions .badge").first).to_have_text("succeeded")
    copy = finished(api, new_id)
    assert (copy["args"], copy["priority"], copy["content"], copy["result"]) == (
        {"word": "again"}, 2, job["content"], "AGAIN")
