"""A tag paused through another process holds for the claims that follow the news of it
(server/fleet_controls.py, FleetControls.settled). The pause's NOTIFY reaches a process
before the NOTIFY of a job submitted after the pause; a claim woken by the job waits for the
re-read the pause started, instead of claiming with the tags of before (CI once saw a direct
worker run a job of a tag paused 25 ms earlier through the server)."""

from __future__ import annotations

import asyncio

from tagrun.server.fleet_controls import FleetControls
from tagrun.server.store import Store
from tests.server.test_store import job, run


def test_a_claim_after_the_news_of_a_pause_does_not_take_the_paused_tag(
        database_url: str) -> None:
    async def scenario(store: Store) -> None:
        controls = FleetControls(store)
        await controls.load()
        await controls.settled()  # nothing under way: at once
        assert controls.unpaused(("db", "web")) == ("db", "web")

        await store.pause_tag("db", None, "schema migration", "superadmin")  # elsewhere
        await store.insert_jobs("default", [job("db"), job("web")])
        controls.changed()  # the pause's NOTIFY, heard before the jobs'
        await controls.settled()  # what a claim does first
        tags = controls.unpaused(("db", "web"))
        assert tags == ("web",)
        claimed = await store.claim_jobs("w", list(tags), 2, 60)
        assert [row.tag for row in claimed] == ["web"]

        await store.resume_tag("db")
        controls.changed()
        waiters = [asyncio.create_task(controls.settled()) for _ in range(3)]
        await asyncio.gather(*waiters)  # one re-read, whoever waits on it
        assert controls.unpaused(("db", "web")) == ("db", "web")
    run(database_url, scenario)
