"""Sessions, CSRF and permissions of the web UI, over plain HTTP (no browser needed)."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import uuid
from html.parser import HTMLParser
from typing import Any

import httpx

from tests.support.processes import SUPERADMIN, TagrunProcess, wait_until

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")


class Tags(HTMLParser):
    """What a page's markup would run or style inline: script bodies, on* and style attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.inline_code: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = {name for name, _ in attrs}
        if tag == "script" and "src" not in names:
            self.inline_code.append("<script> without src")
        self.inline_code += [f"{tag} {name}=" for name in names
                             if name.startswith("on") or name == "style"]


def browser_like(server: TagrunProcess) -> httpx.Client:
    return httpx.Client(base_url=server.url, timeout=30, follow_redirects=False)


def hidden(html: str, name: str) -> str:
    match = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert match, f"no hidden field {name!r} in the page"
    return match.group(1)


def sign_in(client: httpx.Client, token: str = SUPERADMIN, **extra: str) -> httpx.Response:
    form = client.get("/signin")
    assert form.status_code == 200, form.text
    return client.post("/signin", data={"token": token, "csrf": hidden(form.text, "csrf"),
                                        **extra})


def page_csrf(client: httpx.Client, path: str = "/workers") -> str:
    response = client.get(path)
    assert response.status_code == 200, response.text
    match = re.search(r'data-csrf="([^"]+)"', response.text)
    assert match
    return match.group(1)


def workspace_token(api: httpx.Client) -> tuple[str, dict[str, Any]]:
    workspace = f"team-{uuid.uuid4().hex[:8]}"
    assert api.post("/api/workspaces", json={"id": workspace}).status_code == 201
    created = api.post("/api/tokens", json={"workspace": workspace, "label": "ui"})
    assert created.status_code == 201, created.text
    return workspace, created.json()


def test_sign_in_sets_a_strict_http_only_cookie_that_holds_no_token(
        ui_server: TagrunProcess) -> None:
    with browser_like(ui_server) as client:
        response = sign_in(client)
        assert response.status_code == 303 and response.headers["location"] == "/workers"
        [cookie] = [c for c in response.headers.get_list("set-cookie")
                    if c.startswith("tagrun_session=")]
        attributes = {a.strip().lower() for a in cookie.split(";")[1:]}
        assert {"httponly", "samesite=strict", "path=/"} <= attributes
        value = cookie.split(";")[0].partition("=")[2]
        digest = hashlib.sha256(SUPERADMIN.encode()).digest()
        payload = base64.urlsafe_b64decode(value.split(".")[0] + "==")
        for secret in (SUPERADMIN, digest.hex(), base64.b64encode(digest).decode(),
                       base64.urlsafe_b64encode(digest).decode().rstrip("=")):
            assert secret not in value and secret.encode() not in payload
        assert json.loads(payload)["k"] == "superadmin"
        assert client.get("/workers").status_code == 200


def test_sign_in_refuses_a_wrong_token_and_a_form_without_its_csrf_token(
        ui_server: TagrunProcess) -> None:
    with browser_like(ui_server) as client:
        refused = sign_in(client, token="tr_not-a-real-token")
        assert refused.status_code == 401 and "not recognised" in refused.text
        assert "tagrun_session" not in refused.headers.get("set-cookie", "")
        client.get("/signin")
        forged = client.post("/signin", data={"token": SUPERADMIN, "csrf": "forged"})
        assert forged.status_code == 403 and "tagrun_session" not in str(forged.headers)
    with browser_like(ui_server) as client:  # a cross-site form carries no nonce cookie
        bare = client.post("/signin", data={"token": SUPERADMIN, "csrf": "x"})
        assert bare.status_code == 403


def test_the_api_takes_the_session_for_reads_and_wants_the_csrf_header_for_writes(
        ui_server: TagrunProcess) -> None:
    with browser_like(ui_server) as client:
        sign_in(client)
        assert client.get("/api/workers").status_code == 200
        body = {"group": "csrf", "tags": ["csrf-tag"]}
        missing = client.post("/api/agent_tokens", json=body)
        assert missing.status_code == 403 and missing.json()["error"]["code"] == "csrf"
        wrong = client.post("/api/agent_tokens", json=body, headers={"X-CSRF-Token": "nope"})
        assert wrong.status_code == 403
        minted = client.post("/api/agent_tokens", json=body,
                             headers={"X-CSRF-Token": page_csrf(client)})
        assert minted.status_code == 201, minted.text
        revoked = client.delete(f"/api/agent_tokens/{minted.json()['jti']}",
                                headers={"X-CSRF-Token": page_csrf(client)})
        assert revoked.status_code == 200
        # A bearer token still works as before, and wins over the cookie.
        bearer = client.get("/api/workers", headers={"Authorization": "Bearer tr_wrong"})
        assert bearer.status_code == 401


def test_sign_out_ends_the_session_and_every_copy_of_its_cookie(
        ui_server: TagrunProcess) -> None:
    with browser_like(ui_server) as client:
        sign_in(client)
        cookie = client.cookies["tagrun_session"]
        csrf = page_csrf(client)
        assert client.post("/signout", data={"csrf": "wrong"}).status_code == 403
        out = client.post("/signout", data={"csrf": csrf})
        assert out.status_code == 303 and out.headers["location"] == "/signin"
        assert "tagrun_session" not in client.cookies
    with browser_like(ui_server) as replay:
        replay.cookies.set("tagrun_session", cookie)
        page = replay.get("/workers")
        assert page.status_code == 303 and page.headers["location"].startswith("/signin")
        assert replay.get("/api/workers").status_code == 401


def test_a_workspace_token_sees_its_workspace_only(ui_server: TagrunProcess,
                                                   api: httpx.Client) -> None:
    workspace, token = workspace_token(api)
    with browser_like(ui_server) as client:
        landed = sign_in(client, token=token["token"])
        assert landed.headers["location"] == f"/w/{workspace}/jobs"
        assert client.get(f"/w/{workspace}/jobs").status_code == 200
        other = client.get("/w/default/jobs")
        assert other.status_code == 403 and "does not belong" in other.text
        assert client.get("/w/default/jobs/1").status_code == 403
        workers = client.get("/workers")
        assert workers.status_code == 200
        for admin_only in ("New agent worker", "data-edit-setting", "Agent tokens",
                           "data-api-delete"):
            assert admin_only not in workers.text
        csrf = page_csrf(client, f"/w/{workspace}/jobs")
        headers = {"X-CSRF-Token": csrf}
        settings = client.put("/api/settings", json={"key": "task_max_concurrent", "value": 1},
                              headers=headers)
        assert settings.status_code == 403
        mint = client.post("/api/agent_tokens", json={"group": "g", "tags": ["t"]},
                           headers=headers)
        assert mint.status_code == 403
        assert client.get("/api/workers").status_code == 403
        job = client.post(f"/api/w/{workspace}/jobs", json={"language": "identity"},
                          headers=headers)
        assert job.status_code == 201


def test_a_session_stops_with_its_token_and_cannot_be_forged(ui_server: TagrunProcess,
                                                             api: httpx.Client) -> None:
    workspace, token = workspace_token(api)
    with browser_like(ui_server) as client:
        sign_in(client, token=token["token"])
        cookie = client.cookies["tagrun_session"]
        payload, _, mac = cookie.partition(".")
        claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
        claims.update(k="superadmin", w=None)
        forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
        with browser_like(ui_server) as attacker:
            attacker.cookies.set("tagrun_session", f"{forged}.{mac}")
            assert attacker.get("/api/workers").status_code == 401
        assert api.delete(f"/api/tokens/{token['id']}").status_code == 200
        wait_until(lambda: client.get(f"/api/w/{workspace}/jobs").status_code == 401,
                   timeout=10, message="the revoked token's session to stop")
        assert client.get(f"/w/{workspace}/jobs").status_code == 303


def test_pages_forbid_inline_scripts_and_only_redirect_inside_the_ui(
        ui_server: TagrunProcess) -> None:
    with browser_like(ui_server) as client:
        assert sign_in(client, next="//evil.example/x").headers["location"] == "/workers"
        client.cookies.clear()
        assert sign_in(client, next="/w/default/jobs").headers["location"] == "/w/default/jobs"
        for path in ("/workers", "/w/default/jobs", "/w/default/dead-letter",
                     "/w/default/schedules", "/signin"):
            response = client.get(path)
            assert response.headers["content-security-policy"] == CSP, path
            assert response.headers["x-frame-options"] == "DENY"
            tags = Tags()
            tags.feed(response.text)
            assert tags.inline_code == [], path
        assert client.get("/static/app.js").headers["content-security-policy"] == CSP
        assert "content-security-policy" not in client.get("/api/health").headers
