"""The Workers page as an operator uses it: mint a token in the drawer, start a real agent
with it, watch it appear, run jobs on it, revoke the token and see the agent stop."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import httpx
from playwright.sync_api import Page, expect

from tests.support.processes import AgentProcess, TagrunProcess, agent_token
from tests.ui.conftest import answer_prompts, screenshot, sign_in, submit


def mint_in_drawer(page: Page, group: str, tags: str) -> str:
    page.get_by_role("button", name="+ New agent worker").click()
    drawer = page.locator("#new-agent")
    expect(drawer).to_be_visible()
    drawer.locator("input[name=group]").fill(group)
    drawer.locator("input[name=tags]").fill(tags)
    drawer.locator("select[name=expires_in_s]").select_option(label="7 days")
    drawer.get_by_role("button", name="Create token").click()
    token_box = drawer.locator("[data-token]")
    expect(token_box).to_have_text(re.compile(r"^eyJ[\w-]+\.[\w-]+\.[\w-]+$"))
    return token_box.inner_text()


def test_mint_start_agent_run_jobs_and_revoke(page: Page, ui_server: TagrunProcess,
                                              api: httpx.Client, tmp_path: Path) -> None:
    group, tag = f"edge-{uuid.uuid4().hex[:6]}", f"ui-{uuid.uuid4().hex[:6]}"
    sign_in(page)
    expect(page).to_have_url(re.compile(r"/workers$"))
    page.evaluate("window.__sameDocument = true")

    token = mint_in_drawer(page, group, f"{tag}, {tag}-b")
    bash = page.locator("[data-snippet=bash]")
    expect(bash).to_contain_text("export MODE=agent")
    expect(bash).to_contain_text(f"export AGENT_TOKEN='{token}'")
    expect(bash).to_contain_text(f"export BASE_INTERNAL_URL='{ui_server.url}'")
    page.get_by_role("button", name="PowerShell").click()
    powershell = page.locator("[data-snippet=powershell]")
    expect(powershell).to_be_visible()
    expect(powershell).to_contain_text(f"$env:AGENT_TOKEN = '{token}'")
    expect(powershell).to_contain_text("$env:MODE = 'agent'")
    expect(page.locator("[data-copy='[data-token]']")).to_be_visible()
    page.locator("#new-agent").get_by_role("button", name="Done").click()
    expect(page.locator("#new-agent")).to_be_hidden()
    expect(page.locator("[data-token]")).to_have_text("")  # shown once, then gone
    token_row = page.locator("#tokens tr", has_text=group)
    expect(token_row).to_contain_text(tag)

    agent = AgentProcess(ui_server.url, token, tmp_path, name=f"agent-{group}",
                         env={"AGENT_SLOTS": "2"})
    try:
        row = page.locator(f"#agents tr[data-agent='{agent.name}']")
        expect(row).to_be_visible()  # the page refreshed itself: no reload
        expect(row).to_contain_text(group)
        expect(row.locator("[data-agent-status]")).to_have_text("live")
        expect(page.locator(f"#pools tr[data-pool='{group}']")).to_contain_text("1")

        gate = tmp_path / "gate"
        job = submit(api, language="bash", tag=tag, args={"region": "eu-west", "batch": 42},
                     content=(
            'echo "first line from the agent"\n'
            f'while [ ! -f {gate} ]; do sleep 0.05; done\n'
            'echo "second line after the gate"\n'))
        page.goto(f"/w/default/jobs/{job['id']}")
        page.evaluate("window.__sameDocument = true")
        logs = page.locator("[data-logs]")
        expect(logs).to_contain_text("first line from the agent")
        expect(page.locator("#job-actions .badge")).to_have_text("running")
        expect(logs).not_to_contain_text("second line")
        gate.touch()
        expect(logs).to_contain_text("second line after the gate")
        expect(page.locator("#job-actions .badge").first).to_have_text("succeeded")
        expect(page.locator("[data-log-state]")).to_have_text("complete")
        expect(page.locator("#attempts tbody tr")).to_contain_text(agent.name)
        assert page.evaluate("window.__sameDocument") is True
        screenshot(page, "job")

        sleeper = submit(api, language="bash", tag=tag, content="echo sleeping; sleep 300")
        page.goto(f"/w/default/jobs/{sleeper['id']}")
        expect(page.locator("[data-logs]")).to_contain_text("sleeping")
        page.locator("#job-actions").get_by_role("button", name="Cancel").click()
        expect(page.locator("#job-actions .badge").first).to_have_text("cancelled")
        expect(page.locator("#job-summary .job-error")).to_contain_text("cancelled")

        page.goto("/workers")
        page.evaluate("window.__sameDocument = true")
        submit(api, language="bash", tag=f"nobody-{group}", content="echo never")
        unserved = page.locator(f"#tags tr[data-tag='nobody-{group}']")
        expect(unserved).to_have_class(re.compile(r"\bwarn\b"))
        expect(unserved.locator("[data-warning]")).to_have_text("no live worker")
        screenshot(page, "workers")

        page.locator("#tokens tr", has_text=group).get_by_role("button", name="Revoke").click()
        expect(page.locator("#tokens tr", has_text=group)).to_have_count(0)
        assert agent.wait_exit(20) == 3  # the agent stops: its token is refused
        expect(row.locator("[data-agent-status]")).to_have_text("token revoked")
        assert page.evaluate("window.__sameDocument") is True
        assert token not in agent.log_text()
    finally:
        agent.kill()


def test_settings_are_edited_in_place(page: Page, api: httpx.Client) -> None:
    sign_in(page)
    card = page.locator("[data-setting=task_inline_max_concurrent]")
    expect(card.locator("[data-setting-value]")).to_contain_text("0")
    card.get_by_role("button", name="Edit").click()
    card.locator("input[name=value]").fill("-3")
    card.get_by_role("button", name="Save").click()
    expect(card.locator("[data-form-error]")).to_contain_text("whole number")
    card.locator("input[name=value]").fill("7")
    card.get_by_role("button", name="Save").click()
    expect(page.locator("[data-setting=task_inline_max_concurrent] [data-setting-value]")
           ).to_have_text("7")
    assert api.get("/api/settings").json()["settings"]["task_inline_max_concurrent"] == 7
    assert api.put("/api/settings", json={"key": "task_inline_max_concurrent",
                                          "value": 0}).status_code == 200


def test_pause_resume_and_drain_an_agent_from_the_workers_page(
        page: Page, ui_server: TagrunProcess, api: httpx.Client, tmp_path: Path) -> None:
    group, tag = f"steer-{uuid.uuid4().hex[:6]}", f"ui-{uuid.uuid4().hex[:6]}"
    sign_in(page)
    agent = AgentProcess(ui_server.url, agent_token(api, [tag], group), tmp_path,
                         name=f"agent-{group}")
    try:
        page.goto("/workers")
        row = page.locator(f"#agents tr[data-agent='{agent.name}']")
        status = row.locator("[data-agent-status]")
        expect(status).to_have_text("live")
        answer_prompts(page, "disk swap")
        row.get_by_role("button", name="Pause").click()
        expect(status).to_contain_text("paused")
        expect(status).to_contain_text("disk swap")
        row.get_by_role("button", name="Resume").click()
        expect(status).to_have_text("live")
        answer_prompts(page, "retire host")
        row.get_by_role("button", name="Drain").click()
        assert agent.wait_exit(30) == 0  # it said goodbye: stopped, not stale
        expect(status).to_have_text("stopped")
        expect(row.get_by_role("button")).to_have_count(0)  # nothing to steer any more
    finally:
        agent.kill()
