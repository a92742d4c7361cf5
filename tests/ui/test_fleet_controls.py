"""Fleet controls on the Workers page, as an operator uses them in a browser: pause a tag
with a note from its row (its queued job's page says why it waits), and resume it; pause and
resume a group from its pool's row."""

from __future__ import annotations

import uuid

import httpx
from playwright.sync_api import Page, expect

from tests.support.processes import TagrunProcess, api_client
from tests.ui.conftest import answer_prompts, sign_in, submit


def test_a_tag_is_paused_and_resumed_from_its_row_and_its_job_says_why(
        page: Page, ui_server: TagrunProcess, api: httpx.Client) -> None:
    tag = f"ui-hold-{uuid.uuid4().hex[:6]}"
    job = submit(api, language="bash", content="echo", tag=tag)
    try:
        sign_in(page)
        page.goto("/workers")
        row = page.locator(f"#tags tr[data-tag='{tag}']")
        answer_prompts(page, "schema migration")
        row.get_by_role("button", name="Pause").click()
        expect(row.locator("[data-tag-paused]")).to_have_text("paused")
        expect(row).to_contain_text("schema migration")
        paused = api.get("/api/workers").json()["paused_tags"]
        assert [(p["tag"], p["note"], p["paused_by"]) for p in paused] == [
            (tag, "schema migration", "superadmin")]

        page.goto(f"/w/default/jobs/{job['id']}")
        expect(page.locator("[data-pending-reason]")).to_contain_text(
            f"tag {tag} is paused by superadmin until it is resumed: schema migration")

        page.goto("/workers")
        row.get_by_role("button", name="Resume").click()
        expect(row.locator("[data-tag-paused]")).to_have_count(0)
        assert api.get("/api/workers").json()["paused_tags"] == []
    finally:
        api.post(f"/api/tags/{tag}/resume")
        api.post(f"/api/w/default/jobs/{job['id']}/cancel")


def test_a_group_is_paused_from_its_pool_row(
        page: Page, ui_server: TagrunProcess, api: httpx.Client) -> None:
    group, tag = f"ui-pool-{uuid.uuid4().hex[:6]}", f"ui-p-{uuid.uuid4().hex[:6]}"
    token = api.post("/api/agent_tokens", json={"group": group, "tags": [tag]}).json()["token"]
    with api_client(ui_server.url, token) as agent:
        claimed = agent.post("/api/agent_workers/claim", json={"name": f"{group}-1", "wait_s": 0})
        assert claimed.status_code == 200, claimed.text
    try:
        sign_in(page)
        page.goto("/workers")
        row = page.locator(f"#pools tr[data-pool='{group}']")
        answer_prompts(page, "rack move")
        row.get_by_role("button", name="Pause").click()
        expect(row.locator("[data-pool-paused]")).to_have_text("paused")
        [agent_row] = [a for a in api.get("/api/workers", params={"group": group}).json()
                       ["agents"]]
        assert (agent_row["state"], agent_row["paused_as"], agent_row["pause_note"]) == (
            "paused", "group", "rack move")
        row.get_by_role("button", name="Resume").click()
        expect(row.locator("[data-pool-paused]")).to_have_count(0)
    finally:
        api.post(f"/api/pools/{group}/resume")
