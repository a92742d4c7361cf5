"""Which agents, groups and tags are paused, which agents are asked to drain, and the agent
version window, as every replica holds them in memory.

The claim route asks here before it hands an agent jobs, so steering costs no query per
claim: the set is read from the database at start, again whenever any replica changes it
(NOTIFY on FLEET_CHANNEL, or the listener reconnecting), and a pause's timeout is checked
against the clock. A paused agent's claim waits (without jobs) until the pause ends, is
lifted, or the claim's own wait is up; an agent asked to drain is told so. A paused tag is
left out of the tags a claim asks for (agents' and direct workers' alike). An agent below
min_agent_version is refused its claims (routes/agents.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable
from datetime import UTC, datetime

from tagrun.server.store import (
    AGENT_DOWNLOAD_URL,
    DATABASE_ERRORS,
    MIN_AGENT_VERSION,
    RECOMMENDED_AGENT_VERSION,
    Store,
)
from tagrun.shared.version import __version__, older_than

log = logging.getLogger("tagrun.fleet")


class FleetControls:
    def __init__(self, store: Store) -> None:
        self._store = store
        # A paused agent (or group) -> until when (None: until resumed by hand).
        self._agents: dict[str, datetime | None] = {}
        self._groups: dict[str, datetime | None] = {}
        self._draining: set[str] = set()
        self._tags: dict[str, datetime | None] = {}
        self._quarantined: dict[str, datetime | None] = {}  # agent -> until (None: released)
        # Agents with broadcast jobs pinned to them waiting (services/broadcast.py): name ->
        # pin tag. Re-read when a pinned job is queued; `pins_added`: new since the last read.
        self._pins: dict[str, str] = {}
        self.pins_added: set[str] = set()
        self.claims_changed = False  # by the last re-read: paused tags or the minimum version
        # One more at each re-read: a claim computed from an earlier one asks again.
        self.generation = 0
        self.min_agent_version = ""
        self.recommended_agent_version = ""
        self.agent_download_url = ""
        self._changed = asyncio.Event()
        self._reloading: asyncio.Task[None] | None = None
        self._again = False  # changed while a re-read was under way: read again after it
        self._on_change: list[Callable[[], None]] = []

    def on_change(self, callback: Callable[[], None]) -> None:
        """Call `callback()` after each re-read (the dispatcher ends paused agents' waits)."""
        self._on_change.append(callback)

    async def load(self) -> None:
        rows = await self._store.fleet_controls()
        settings = await self._store.get_settings()
        pins = {tag.partition("/")[2]: tag for tag in await self._store.pinned_queued()}
        agents: dict[str, datetime | None] = {}
        groups: dict[str, datetime | None] = {}
        tags: dict[str, datetime | None] = {}
        quarantined: dict[str, datetime | None] = {}
        draining: set[str] = set()
        for row in rows:
            if row["scope"] in ("group", "tag", "quarantine"):
                {"group": groups, "tag": tags, "quarantine": quarantined}[row["scope"]][
                    row["target"]] = row["paused_until"]
                continue
            if row["paused"]:
                agents[row["target"]] = row["paused_until"]
            if row["drain"]:
                draining.add(row["target"])
        self._agents, self._groups, self._draining = agents, groups, draining
        minimum = _text(settings.get(MIN_AGENT_VERSION))
        # Read by the callbacks below: every waiting claim answers and asks again, for the
        # tags it may have now, or to hear that its version is refused.
        self.claims_changed = tags != self._tags or minimum != self.min_agent_version
        self._tags = tags
        self._quarantined = quarantined
        self.pins_added = {name for name, tag in pins.items() if self._pins.get(name) != tag}
        self._pins = pins
        self.generation += 1
        self.min_agent_version = minimum
        self.recommended_agent_version = _text(settings.get(RECOMMENDED_AGENT_VERSION)) \
            or __version__
        self.agent_download_url = _text(settings.get(AGENT_DOWNLOAD_URL))
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()  # claims waiting out a pause look again
        for callback in self._on_change:
            callback()

    def changed(self) -> None:
        """Something changed (a NOTIFY, or notifications may have been missed): re-read. A
        change while a re-read is under way (it may have read before that change) makes it
        read once more when it is done; any number of them, once."""
        if self._reloading is None or self._reloading.done():
            self._reloading = asyncio.get_running_loop().create_task(self._reload())
        else:
            self._again = True

    async def reloaded(self) -> None:
        """Re-read now and return once what this process holds includes every change
        committed before the call: a pause, resume or drain made through this process holds
        here for the requests after its answer, not only once its NOTIFY comes back."""
        self.changed()
        if self._reloading is not None:
            await asyncio.shield(self._reloading)  # one re-read, whoever else waits on it

    async def settled(self) -> None:
        """Wait for a re-read already under way, if any. A change committed elsewhere (a tag
        paused through another replica) is heard by NOTIFY before the jobs submitted after
        it are, so a claim that waits here first never uses what was true before it."""
        reloading = self._reloading
        if reloading is not None and not reloading.done():
            await asyncio.shield(reloading)

    async def _reload(self) -> None:
        again = True
        while again:
            self._again = False
            try:
                await self.load()
            except DATABASE_ERRORS as exc:
                log.warning("fleet.reload_failed", extra={"error": str(exc)})
            again = self._again

    async def close(self) -> None:
        if self._reloading is not None:
            self._reloading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reloading

    def paused_for(self, name: str, group: str) -> float | None:
        """Seconds the agent's pause (or its group's, or its quarantine) still lasts (inf:
        until resumed); None if it is not paused."""
        now = datetime.now(UTC)
        left: float | None = None
        for until in (self._agents.get(name, now), self._groups.get(group, now),
                      self._quarantined.get(name, now)):
            if until is None:
                return math.inf
            if until > now:
                seconds = (until - now).total_seconds()
                left = seconds if left is None else max(left, seconds)
        return left

    def with_pin(self, name: str, jti: str, tags: tuple[str, ...]) -> tuple[str, ...]:
        """`tags` and, when broadcast jobs wait pinned to this agent (name and token), its
        pin tag."""
        pin = self._pins.get(name) if self._pins else None
        return (*tags, pin) if pin is not None and pin[1:].startswith(f"{jti}/") else tags

    def queued(self, tag: str | None) -> None:
        """A job was queued under `tag` (a NOTIFY): a pinned one makes its agent claim it."""
        if tag is not None and tag.startswith("@"):
            self.changed()

    def quarantined(self, name: str) -> bool:
        until = self._quarantined.get(name, datetime.min.replace(tzinfo=UTC))
        return until is None or until > datetime.now(UTC)

    def paused_tags(self) -> set[str]:
        """The tags paused now (none, nearly always: then this costs one dict check)."""
        if not self._tags:
            return set()
        now = datetime.now(UTC)
        return {tag for tag, until in self._tags.items() if until is None or until > now}

    def unpaused(self, tags: tuple[str, ...]) -> tuple[str, ...]:
        """`tags` without the paused ones."""
        paused = self.paused_tags()
        return tuple(t for t in tags if t not in paused) if paused else tags

    def next_tag_resume_s(self) -> float | None:
        """Seconds until the first timed tag pause ends (None: none is timed)."""
        now = datetime.now(UTC)
        left = [(until - now).total_seconds() for until in self._tags.values()
                if until is not None and until > now]
        return min(left) if left else None

    def version_refusal(self, version: str, os_name: str | None, arch: str | None
                        ) -> str | None:
        """Why an agent of `version` may claim nothing here (None: it may)."""
        minimum = self.min_agent_version
        if not minimum or not older_than(version, minimum):
            return None
        name = f"tagrun-agent-{self.recommended_agent_version}-{os_name or '<os>'}-" \
               f"{arch or '<arch>'}{'.exe' if os_name == 'windows' else ''}"
        where = self.agent_download_url or "the release page"
        return (f"this agent is version {version}, below the server's minimum {minimum}; "
                f"it may finish its running jobs but claims no more. Install "
                f"{self.recommended_agent_version} or newer ({name} from {where}) and start "
                "it again")

    def undrain(self, name: str) -> None:
        """A new process of a drained agent connected: it claims as usual."""
        self._draining.discard(name)

    def draining(self, name: str) -> bool:
        return name in self._draining

    async def wait_change(self, timeout: float) -> None:
        """Until the controls change or `timeout` seconds pass."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)


def _text(value: object) -> str:
    return value.strip() if isinstance(value, str) else ""
