"""The Schedules page: cron, timezone, overlap, next fires, last runs, built-ins, a toggle."""

from __future__ import annotations

import re
import uuid

import httpx
from playwright.sync_api import Page, expect

from tests.support.processes import wait_until
from tests.ui.conftest import sign_in


def test_schedules_show_their_fires_and_are_switched_off_in_place(page: Page,
                                                                   api: httpx.Client) -> None:
    path = f"f/ui/{uuid.uuid4().hex[:6]}"
    deployed = api.post("/api/w/default/scripts",
                        json={"path": path, "language": "identity", "content": ""})
    assert deployed.status_code == 201, deployed.text
    name = f"ui-every-second-{uuid.uuid4().hex[:6]}"
    created = api.post("/api/w/default/schedules", json={
        "name": name, "cron": "* * * * * *", "script": path, "timezone": "Europe/Paris",
        "overlap": "skip"})
    assert created.status_code == 201, created.text

    def fired() -> bool:
        schedule = api.get(f"/api/w/default/schedules/{name}").json()
        return any(r["job_id"] for r in schedule["last_runs"])
    wait_until(fired, timeout=15, message="the schedule to fire")

    sign_in(page)
    page.goto("/w/default/schedules")
    row = page.locator(f"tr[data-schedule='{name}']")
    expect(row).to_contain_text("* * * * * *")
    expect(row).to_contain_text("Europe/Paris")
    expect(row).to_contain_text("skip")
    expect(row.locator("td.times").first.locator("div")).to_have_count(3)
    expect(row.locator("td.times a").first).to_have_attribute(
        "href", re.compile(r"^/w/default/jobs/\d+$"))
    expect(page.locator("tr[data-schedule^='tagrun.']").first).to_contain_text("built-in")

    row.locator(".switch").click()
    expect(page.locator("[data-toasts]")).to_contain_text(f"{name}: disabled")
    assert api.get(f"/api/w/default/schedules/{name}").json()["enabled"] is False
    page.reload()
    expect(row.locator("[data-schedule-toggle]")).not_to_be_checked()
    expect(row.locator("td.times").first).to_have_text("—")
