"""The Secrets page: set a secret, see its name and scope, delete it; never its value."""

from __future__ import annotations

import uuid

import httpx
from playwright.sync_api import Page, expect

from tests.ui.conftest import answer_prompts, sign_in


def test_a_secret_is_set_listed_and_deleted_without_its_value_ever_shown(
        page: Page, api: httpx.Client) -> None:
    name = f"UI_SECRET_{uuid.uuid4().hex[:6].upper()}"
    value = f"ui-value-{uuid.uuid4().hex}"
    sign_in(page)
    page.goto("/w/default/secrets")
    form = page.locator("[data-secret-form]")
    form.locator("input[name=name]").fill(name)
    form.locator("textarea[name=value]").fill(value)
    form.locator("input[name=allowed_tags]").fill("deploy, prod")
    form.locator("button[type=submit]").click()
    row = page.locator(f"tr[data-secret='{name}']")
    expect(row).to_contain_text("deploy")
    expect(row).to_contain_text("prod")
    expect(row).to_contain_text("superadmin")
    expect(form.locator("textarea[name=value]")).to_have_value("")  # gone from the page
    listed = {s["name"]: s for s in api.get("/api/w/default/secrets").json()["secrets"]}
    assert listed[name]["allowed_tags"] == ["deploy", "prod"]
    page.reload()
    expect(row).to_be_visible()
    assert value not in page.content()

    answer_prompts(page, "staging")
    row.locator("button", has_text="Change tags").click()
    expect(row).not_to_contain_text("deploy")
    expect(row).to_contain_text("staging")
    listed = {s["name"]: s for s in api.get("/api/w/default/secrets").json()["secrets"]}
    assert listed[name]["allowed_tags"] == ["staging"]

    row.locator("button", has_text="Delete").click()  # the confirm is accepted
    expect(row).to_have_count(0)
    assert name not in {s["name"] for s in api.get("/api/w/default/secrets").json()["secrets"]}


def test_a_refused_secret_says_why(page: Page) -> None:
    sign_in(page)
    page.goto("/w/default/secrets")
    form = page.locator("[data-secret-form]")
    form.locator("input[name=name]").fill("TAGRUN_OWN")
    form.locator("textarea[name=value]").fill("long enough")
    form.locator("button[type=submit]").click()
    expect(page.locator(".toast.error")).to_contain_text("reserved")
