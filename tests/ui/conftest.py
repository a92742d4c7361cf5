"""The web UI in a real browser: Debian's chromium driven by Playwright, against a real server.

Playwright's sync API keeps an event loop running in this thread while a browser is open,
so nothing here may call `asyncio.run` then: the server and its database are made first,
and one server and one browser serve the whole package (each test has its own browser
context, so its own cookies, and its own tags, groups and names).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import httpx
import pytest

from tagrun.server.vault import new_key
from tests.support.database import DatabaseFactory
from tests.support.processes import SUPERADMIN, TagrunProcess, api_client

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Dialog, Page

CHROMIUM = Path(os.environ.get("TAGRUN_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
FAST = {"TAGRUN_LEASE_S": "3", "TAGRUN_HEARTBEAT_S": "0.5"}
MAX_LOG_CHARS = 65536  # the UI server's TAGRUN_MAX_LOG_BYTES: a job can go past it quickly
EXPECTED_CONSOLE_ERRORS: dict[int, list[str]] = {}
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"


@pytest.fixture(scope="package")
def ui_server(databases: DatabaseFactory, tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[TagrunProcess]:
    proc = TagrunProcess("standalone", database_url=databases.new(),
                         data_dir=tmp_path_factory.mktemp("ui-server"),
                         env={**FAST, "TAGRUN_MAX_LOG_BYTES": str(MAX_LOG_CHARS),
                              "TAGRUN_SECRETS_KEY": new_key()})
    proc.wait_healthy()
    yield proc
    proc.stop()


@pytest.fixture
def api(ui_server: TagrunProcess) -> Iterator[httpx.Client]:
    with api_client(ui_server.url) as client:
        yield client


def missing(reason: str) -> NoReturn:
    """Skip, or fail where the browser must be there (CI sets TAGRUN_REQUIRE_CHROMIUM=1)."""
    if os.environ.get("TAGRUN_REQUIRE_CHROMIUM"):
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="package")
def browser(ui_server: TagrunProcess) -> Iterator[Browser]:
    if not CHROMIUM.exists():
        missing(f"no chromium at {CHROMIUM}: the UI tests need Debian's chromium "
                "(apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("the UI tests need Playwright for Python: pip install -e '.[dev]'")
    from playwright.sync_api import expect

    expect.set_options(timeout=15_000)
    playwright = sync_playwright().start()
    try:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()
    finally:
        playwright.stop()


@pytest.fixture
def page(browser: Browser, ui_server: TagrunProcess) -> Iterator[Page]:
    context = browser.new_context(base_url=ui_server.url,
                                  viewport={"width": 1440, "height": 900})
    context.set_default_timeout(15_000)
    page = context.new_page()
    errors: list[str] = []
    allowed = EXPECTED_CONSOLE_ERRORS.setdefault(id(page), ["Failed to load resource"])
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text)
            if msg.type == "error" and not msg.text.startswith(tuple(allowed)) else None)

    def on_dialog(dialog: Dialog) -> None:
        if dialog.type == "confirm":
            dialog.accept()
        elif dialog.type == "prompt" and id(page) in PROMPT_ANSWERS:
            dialog.accept(PROMPT_ANSWERS[id(page)])
        else:
            errors.append(f"unexpected {dialog.type}: {dialog.message}")
    page.on("dialog", on_dialog)
    yield page
    PROMPT_ANSWERS.pop(id(page), None)
    context.close()
    del EXPECTED_CONSOLE_ERRORS[id(page)]
    assert not errors, f"the page reported errors: {errors}"


PROMPT_ANSWERS: dict[int, str] = {}


def answer_prompts(page: Page, text: str) -> None:
    """From now on, the page's prompts (a pause's note, say) are answered with `text`."""
    PROMPT_ANSWERS[id(page)] = text


def expect_console_errors(page: Page, prefix: str) -> None:
    """From now on, console errors starting with `prefix` are expected, not a failure."""
    EXPECTED_CONSOLE_ERRORS[id(page)].append(prefix)


def sign_in(page: Page, token: str = SUPERADMIN) -> None:
    page.goto("/signin")
    page.fill("#token", token)
    page.click("form[action='/signin'] button[type=submit]")
    page.wait_for_url(lambda url: "/signin" not in url)


def screenshot(page: Page, name: str) -> None:
    """Refresh docs/screenshots/NAME.png when asked to (or when it is missing)."""
    target = SCREENSHOTS / f"{name}.png"
    if os.environ.get("TAGRUN_UPDATE_SCREENSHOTS") or not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        shot = target.with_suffix(".tmp.png")
        page.screenshot(path=str(shot), full_page=True)
        shutil.move(shot, target)


def submit(api: httpx.Client, **body: Any) -> dict[str, Any]:
    response = api.post("/api/w/default/jobs", json=body)
    assert response.status_code == 201, response.text
    job: dict[str, Any] = response.json()
    return job
