"""An agent's page and the Workers list's search, as an operator uses them: open an agent from
the list, read its jobs and history, pause it with a note; filter the list by name, state and
group, page through it; and read all of it on a phone (390 px wide) without sideways
scrolling."""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import Page, expect

from tests.support.processes import (
    AgentProcess,
    TagrunProcess,
    api_client,
    finished,
    wait_until,
)
from tests.ui.conftest import answer_prompts, screenshot, sign_in, submit
from tests.ui.test_session import workspace_token

PHONE = {"width": 390, "height": 844}
SESSION = {"Tagrun-Agent-Session": "ui-agent-page-session"}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def labelled_token(api: httpx.Client, group: str, tags: list[str], label: str
                   ) -> dict[str, Any]:
    response = api.post("/api/agent_tokens", json={"group": group, "tags": tags,
                                                   "label": label})
    assert response.status_code == 201, response.text
    minted: dict[str, Any] = response.json()
    return minted


def simulated_agents(ui_server: TagrunProcess, token: str, names: list[str]) -> None:
    """Agents that claimed once over the agent API: each has a record, as a real one would."""
    with api_client(ui_server.url, token) as agent:
        agent.headers.update(SESSION)
        for name in names:
            response = agent.post("/api/agent_workers/claim", json={"name": name, "wait_s": 0})
            assert response.status_code == 200, response.text


def fits_the_screen(page: Page) -> None:
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"{page.url} is {width} px wide on a 390 px screen"


def test_an_agent_s_page_from_the_list_shows_its_jobs_and_history_and_pauses_it(
        page: Page, ui_server: TagrunProcess, api: httpx.Client, tmp_path: Path) -> None:
    group, tag = unique("host"), unique("ui")
    minted = labelled_token(api, group, [tag], "rack 3")
    agent = AgentProcess(ui_server.url, minted["token"], tmp_path, name=f"agent-{group}",
                         env={"AGENT_SLOTS": "2"})
    gate = tmp_path / "gate"
    try:
        done = submit(api, language="bash", tag=tag, content="echo done")
        assert finished(api, done["id"])["status"] == "succeeded"
        held = submit(api, language="bash", tag=tag,
                      content=f"while [ ! -f {gate} ]; do sleep 0.05; done")
        sign_in(page)
        page.goto("/workers")
        page.locator(f"#agents tr[data-agent='{agent.name}'] [data-agent-link]").click()
        expect(page).to_have_url(re.compile(rf"/workers/{agent.name}$"))
        expect(page.locator("[data-agent-name]")).to_have_text(agent.name)
        expect(page.locator(f"#agent-recent tr[data-recent-job='{done['id']}']")
               ).to_contain_text("succeeded")
        running = page.locator(f"#agent-current tr[data-current-job='{held['id']}']")
        expect(running).to_contain_text(tag)  # the page refreshes itself as it starts
        expect(page.locator("[data-agent-slots]")).to_contain_text("1")
        expect(page.locator("[data-agent-token]")).to_contain_text("rack 3")
        expect(page.locator("[data-agent-token]")).to_contain_text(minted["jti"])
        expect(page.locator("#agent-history")).to_contain_text("Nothing has happened")

        answer_prompts(page, "disk swap")
        page.locator("#agent-actions").get_by_role("button", name="Pause").click()
        expect(page.locator("[data-agent-state]")).to_have_text("paused")
        expect(page.locator("[data-agent-note]")).to_contain_text("disk swap")
        paused = page.locator("#agent-history tr[data-history='paused']")
        expect(paused).to_contain_text("disk swap")
        expect(paused).to_contain_text("superadmin")
        expect(running).to_be_visible()  # a paused agent keeps its running jobs
        screenshot(page, "agent")
        page.locator("#agent-actions").get_by_role("button", name="Resume").click()
        expect(page.locator("#agent-history tbody tr").first).to_contain_text("resumed")
        expect(page.locator("[data-agent-state]")).to_have_text(re.compile("^(live|busy)$"))

        running.get_by_role("link").click()  # to the job it runs, and back to the agent
        expect(page).to_have_url(re.compile(rf"/w/default/jobs/{held['id']}$"))
        page.locator("[data-job-worker]").click()
        expect(page).to_have_url(re.compile(rf"/workers/{agent.name}$"))
    finally:
        gate.touch()
        agent.kill()


def test_the_list_is_searched_by_name_filtered_by_state_and_group_and_paged(
        page: Page, ui_server: TagrunProcess, api: httpx.Client, tmp_path: Path) -> None:
    # Names that sort last, so these 103 agents never push other tests' agents off page 1.
    group, tag = unique("zz-fleet"), unique("ui")
    minted = labelled_token(api, group, [tag], "many")
    names = [f"{group}-{n:03d}" for n in range(103)]
    simulated_agents(ui_server, minted["token"], names)
    paused = AgentProcess(ui_server.url, labelled_token(api, group, [tag], "real")["token"],
                          tmp_path, name=f"{group}-paused")
    try:
        wait_until(lambda: api.get(f"/api/workers/{paused.name}").status_code == 200,
                   message="the real agent to connect")
        assert api.post(f"/api/workers/{paused.name}/pause",
                        json={"note": "maintenance"}).status_code == 200
        total = int(api.get("/api/workers").json()["totals"]["all"])
        sign_in(page)

        search = page.locator("[data-agent-filters] input[name=name]")
        search.fill(group)
        search.press("Enter")
        expect(page).to_have_url(re.compile(rf"name={group}"))
        rows = page.locator("#agents tbody tr")
        expect(rows).to_have_count(100)
        expect(page.locator("#agents .pager")).to_contain_text("Agents 1–100 of 104")
        # The count (like the cards) still knows every agent, not only the page's.
        expect(page.locator("[data-agents-count]")).to_have_text(f"104 of {total}")
        page.locator("#agents .pager").get_by_role("link", name="Next →").click()
        expect(rows).to_have_count(4)
        expect(rows.last).to_have_attribute("data-agent", paused.name)

        page.locator("[data-agent-filters] select[name=state]").select_option("paused")
        expect(page).to_have_url(re.compile(r"state=paused"))
        expect(rows).to_have_count(1)
        expect(rows.first).to_have_attribute("data-agent", paused.name)
        expect(rows.first.locator("[data-agent-status]")).to_contain_text("maintenance")
        expect(page.locator("[data-agents-count]")).to_have_text(f"1 of {total}")

        page.get_by_role("link", name="Clear").click()
        page.locator("[data-agent-filters] select[name=group]").select_option(group)
        expect(page.locator("#agents .pager")).to_contain_text("of 104")
        page.locator("[data-agent-filters] input[name=name]").fill("no-such-agent-anywhere")
        page.locator("[data-agent-filters] input[name=name]").press("Enter")
        expect(page.locator("[data-no-match]")).to_be_visible()
    finally:
        paused.kill()


def test_a_workspace_token_sees_the_agent_but_not_its_token_buttons_or_others_jobs(
        page: Page, ui_server: TagrunProcess, api: httpx.Client) -> None:
    group, tag = unique("ws"), unique("ui")
    minted = labelled_token(api, group, [tag], "secret label")
    name = f"{group}-sim"
    simulated_agents(ui_server, minted["token"], [name])
    assert api.post(f"/api/workers/{name}/pause", json={"note": "swap"}).status_code == 200
    workspace, token = workspace_token(api)

    sign_in(page, token["token"])
    page.goto(f"/workers/{name}")
    expect(page.locator("[data-agent-state]")).to_have_text("paused")
    expect(page.locator("#agent-history tr[data-history='paused']")).to_contain_text("swap")
    expect(page.locator("#agent-actions button")).to_have_count(0)
    expect(page.locator("[data-agent-token]")).to_have_count(0)
    assert minted["jti"] not in page.content() and "secret label" not in page.content()
    expect(page.locator("#agent-recent")).to_contain_text(f"in workspace {workspace}")
    page.goto("/workers/no-such-agent")
    expect(page.locator("main")).to_contain_text("no agent or worker named")


def test_a_phone_reads_the_workers_list_an_agent_and_a_job_without_scrolling_sideways(
        page: Page, ui_server: TagrunProcess, api: httpx.Client, tmp_path: Path) -> None:
    group = unique("phone")
    tags = [f"{group}-gpu-a100-80gb-us-east-1", f"{group}-linux"]
    agent = AgentProcess(ui_server.url, labelled_token(api, group, tags, "pocket")["token"],
                         tmp_path, name=f"{group}-a-rather-long-agent-host-name.example.org")
    try:
        job = submit(api, language="bash", tag=tags[0], args={"region": "eu-west-1" * 8},
                     content="echo " + "a-long-unbroken-line-of-output-" * 12)
        assert finished(api, job["id"])["status"] == "succeeded"
        assert api.post(f"/api/workers/{agent.name}/pause",
                        json={"note": "a note long enough to wrap " * 6}).status_code == 200
        page.set_viewport_size(PHONE)
        sign_in(page)
        page.goto("/workers")
        row = page.locator(f"#agents tr[data-agent='{agent.name}']")
        expect(row).to_be_visible()
        fits_the_screen(page)
        tag = row.locator(".tag").first
        box = tag.bounding_box()
        assert box is not None and box["height"] < 30, "a tag broke over several lines"
        assert tag.evaluate("t => t.scrollWidth <= t.clientWidth + 1"), "a tag is cut off"
        page.goto(f"/workers/{agent.name}")
        expect(page.locator(f"#agent-recent tr[data-recent-job='{job['id']}']")).to_be_visible()
        fits_the_screen(page)
        page.goto(f"/w/default/jobs/{job['id']}")
        expect(page.locator("[data-log-state]")).to_have_text("complete")
        fits_the_screen(page)
        page.goto("/w/default/jobs")
        fits_the_screen(page)
    finally:
        agent.kill()
