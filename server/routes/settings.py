"""Superadmin settings: `GET /api/settings`, `PUT /api/settings` with `{"key", "value"}`."""

from __future__ import annotations

from starlette.requests import Request
from starlette.routing import Route

from tagrun.server.auth import authenticator
from tagrun.server.fleet_controls import FleetControls
from tagrun.server.http import JSON, read_body
from tagrun.server.services.settings import SettingIn, check, current
from tagrun.server.store import Store


async def get_settings(request: Request) -> JSON:
    await authenticator(request).superadmin(request)
    return JSON({"settings": await current(request.app.state.store)})


async def put_setting(request: Request) -> JSON:
    await authenticator(request).superadmin(request)
    body = await read_body(request, SettingIn)
    store: Store = request.app.state.store
    await store.put_setting(body.key, check(body.key, body.value))
    # What the fleet controls hold of it (the agent version window) holds here before the
    # answer; other replicas hear of it by NOTIFY.
    controls: FleetControls = request.app.state.controls
    await controls.reloaded()
    return JSON({"settings": await current(store)})


routes = [
    Route("/api/settings", get_settings, methods=["GET"]),
    Route("/api/settings", put_setting, methods=["PUT"]),
]
