"""The layers of docs/architecture.md, checked against every import in the code: no arrow
points from a lower layer back up. (The agent's own boundary: tests/agent/test_import_boundary.)"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"server": "tagrun.server", "shared": "tagrun.shared", "agent": "tagrun.agent",
            "client": "tagrun.client"}

# module prefix -> the prefixes it must never import
FORBIDDEN = {
    "tagrun.shared": ("tagrun.server", "tagrun.agent"),
    # The Python client stands on httpx and the standard library alone: it is what other
    # teams' programs import, and none of them should load a server, an agent or a driver.
    "tagrun.client": ("tagrun.server", "tagrun.agent", "tagrun.shared", "asyncpg", "starlette",
                      "msgspec"),
    "tagrun.server.store": (
        "tagrun.server.services", "tagrun.server.routes", "tagrun.server.ui",
        "tagrun.server.openapi", "tagrun.server.app", "tagrun.server.runtime",
        "tagrun.server.cli", "tagrun.server.scheduler", "tagrun.server.worker",
        "tagrun.server.dispatcher", "tagrun.server.maintenance", "tagrun.server.heartbeats"),
    "tagrun.server.services": (
        "tagrun.server.routes", "tagrun.server.ui", "tagrun.server.openapi",
        "tagrun.server.app", "tagrun.server.runtime", "tagrun.server.cli",
        "tagrun.server.http", "starlette",
        # the runners, which stand on services
        "tagrun.server.scheduler", "tagrun.server.worker", "tagrun.server.dispatcher",
        "tagrun.server.heartbeats", "tagrun.server.listener", "tagrun.server.maintenance",
        "tagrun.server.fleet_controls", "tagrun.server.token_budget"),
    # The runners stand on services and the store, never on HTTP or on what assembles them.
    **{f"tagrun.server.{runner}": (
        "tagrun.server.ui", "tagrun.server.openapi", "tagrun.server.http",
        "tagrun.server.auth", "tagrun.server.metrics", "tagrun.server.app",
        "tagrun.server.runtime", "tagrun.server.cli", "starlette")
       for runner in ("scheduler", "worker", "dispatcher", "heartbeats", "listener",
                      "maintenance", "fleet_controls", "token_budget")},
    # Only the app assembles routes: nothing else may lean on a route module.
    "tagrun.server": ("tagrun.server.routes",),
}
ALLOWED_TO_IMPORT_ROUTES = ("tagrun.server.routes", "tagrun.server.app")


def modules() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            relative = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in relative.parts if p != "__init__"]
            name = ".".join([package, *parts])
            tree = ast.parse(path.read_text(), str(path))
            imported = []
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    imported += [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
                elif isinstance(node, ast.Import):
                    imported += [a.name for a in node.names]
            found[name] = imported
    return found


def under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def test_the_layers_are_where_the_rules_expect_them() -> None:
    found = modules()
    for prefix in ("tagrun.server.store", "tagrun.server.services", "tagrun.server.routes",
                   "tagrun.client"):
        assert any(under(m, prefix) for m in found), f"no module under {prefix}"


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_no_import_points_back_up(layer: str) -> None:
    arrows = []
    for module, imported in modules().items():
        if not under(module, layer):
            continue
        if layer == "tagrun.server" and any(under(module, p) for p in ALLOWED_TO_IMPORT_ROUTES):
            continue
        for target in imported:
            for forbidden in FORBIDDEN[layer]:
                if under(target, forbidden) and not under(module, forbidden):
                    arrows.append(f"{module} imports {target}")
    assert not arrows, "imports against the layers (docs/architecture.md):\n" + "\n".join(
        sorted(set(arrows)))


def _reached(found: dict[str, list[str]], side: str) -> set[str]:
    """The shared modules one side (agent or server) imports, directly or through others."""
    seen: set[str] = set()
    todo = [t for m, imported in found.items() if under(m, side) for t in imported]
    while todo:
        target = todo.pop()
        if under(target, "tagrun.shared") and target in found and target not in seen:
            seen.add(target)
            todo += found[target]
    return seen


def test_shared_holds_only_what_both_sides_use() -> None:
    # What only the server uses belongs in server/ (the agent binary carries all of shared/).
    found = modules()
    shared = {m for m in found if under(m, "tagrun.shared") and m != "tagrun.shared"}
    agent, server = _reached(found, "tagrun.agent"), _reached(found, "tagrun.server")
    assert shared - server == set(), "shared modules the server never imports"
    assert shared - agent == set(), "shared modules the agent never imports"
