"""Schedules: fires under an injected clock against a real database, and the API's checks."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from tagrun.server.config import load_config
from tagrun.server.cron import Cron, CronError
from tagrun.server.errors import NotFound
from tagrun.server.maintenance import MaintenanceWorker
from tagrun.server.scheduler import Scheduler
from tagrun.server.services.maintenance import BUILTINS, MAINTENANCE_TAG
from tagrun.server.services.schedules import run_view
from tagrun.server.store import ClaimedRow, Store, create_pool
from tagrun.server.store.schedules import ScheduleFields, ScheduleRecord
from tests.support.processes import TagrunProcess, api_client

LEASES = load_config({}).lease_bounds  # the default server's

Scenario = Callable[[Store], Awaitable[None]]


def run(database_url: str, scenario: Scenario) -> None:
    async def go() -> None:
        pool = await create_pool(database_url, size=4)
        try:
            await scenario(Store(pool))
        finally:
            await pool.close()
    asyncio.run(go())


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


class Clock:
    """The scheduler's clock, moved by the test."""

    def __init__(self, start: str) -> None:
        self.now = at(start)

    def __call__(self) -> datetime:
        return self.now

    def set(self, moment: str | datetime) -> None:
        self.now = at(moment) if isinstance(moment, str) else moment


async def deploy(store: Store, path: str = "f/s", workspace: str = "default") -> None:
    await store.deploy_script(workspace, path=path, language="identity", content="", tag=None,
                              timeout_s=None, max_attempts=1, concurrency_limit=None)


async def add_schedule(store: Store, clock: Clock, name: str, cron: str, *,
                       timezone: str = "UTC", overlap: str = "queue", script: str = "f/s",
                       workspace: str = "default", enabled: bool = True) -> ScheduleRecord:
    return await store.create_schedule(workspace, ScheduleFields(
        name=name, cron=cron, timezone=timezone, script_path=script, args={},
        overlap=overlap, enabled=enabled, timeout_s=None, tag=None,
        next_fire_at=Cron(cron, timezone).next_after(clock()) if enabled else None))


async def runs(store: Store, name: str, workspace: str = "default") -> list[dict[str, Any]]:
    """Every fire of a schedule, oldest first, as the API shows them."""
    schedule = await store.get_schedule(workspace, name)
    last = (await store.last_runs([schedule.id], 1000))[schedule.id]
    return [run_view(r) for r in reversed(last)]


async def fire_times(store: Store, name: str) -> list[str]:
    return [r["fire_at"] for r in await runs(store, name)]


async def sweep(scheduler: Scheduler, clock: Clock, start: str, end: str,
                step: timedelta) -> None:
    """Tick at every `step` from `start` to `end`, as a scheduler awake all along would."""
    clock.set(start)
    while clock.now <= at(end):
        await scheduler.tick()
        clock.set(clock.now + step)


# --- cron expressions ------------------------------------------------------------------------


@pytest.mark.parametrize("expression", ["* * *", "61 * * * *", "* * * * * * *", "bogus",
                                        "0 0 30 2 *", "", "*/0 * * * *", "60 * * * * *"])
def test_invalid_cron_expressions_are_refused_with_a_reason(expression: str) -> None:
    with pytest.raises(CronError, match="cron"):
        Cron(expression)


@pytest.mark.parametrize("timezone", ["Mars/Olympus", "../etc/passwd", "", "Europe", "x" * 80])
def test_unknown_timezones_are_refused_by_name(timezone: str) -> None:
    with pytest.raises(CronError, match="timezone"):
        Cron("* * * * *", timezone)


def test_six_fields_put_seconds_first() -> None:
    fires = Cron("*/15 * * * * *").next_fires(at("2024-01-01T00:00:00+00:00"), 3)
    assert [f.isoformat() for f in fires] == [
        "2024-01-01T00:00:15+00:00", "2024-01-01T00:00:30+00:00", "2024-01-01T00:00:45+00:00"]


@pytest.mark.parametrize("cron", ["30 2 * * *", "0 30 2 * * *", "0,30 2,3 * * *"])
def test_daylight_saving_five_and_six_fields_alike_in_berlin(cron: str) -> None:
    # 2026-03-29: 02:00-03:00 local is skipped; 2026-10-25: 02:00-03:00 happens twice.
    berlin = Cron(cron, "Europe/Berlin")
    wall = {"30 2 * * *": ["02:30"], "0 30 2 * * *": ["02:30"],
            "0,30 2,3 * * *": ["02:00", "02:30", "03:00", "03:30"]}[cron]

    def day(start: str, count: int) -> list[str]:
        return [f.isoformat() for f in berlin.next_fires(at(start), count)]

    if len(wall) == 1:  # 02:30 runs at 03:00 CEST in spring, once (CEST) in autumn
        assert day("2026-03-28T12:00:00+00:00", 2) == [
            "2026-03-29T01:00:00+00:00", "2026-03-30T00:30:00+00:00"]
        assert day("2026-10-24T12:00:00+00:00", 2) == [
            "2026-10-25T00:30:00+00:00", "2026-10-26T01:30:00+00:00"]
    else:  # 02:00, 02:30 and 03:00 of the gap day make one run, at 03:00 CEST
        assert day("2026-03-28T12:00:00+00:00", 3) == [
            "2026-03-29T01:00:00+00:00", "2026-03-29T01:30:00+00:00",
            "2026-03-30T00:00:00+00:00"]
        assert day("2026-10-24T12:00:00+00:00", 5) == [
            "2026-10-25T00:00:00+00:00", "2026-10-25T00:30:00+00:00",
            "2026-10-25T02:00:00+00:00", "2026-10-25T02:30:00+00:00",
            "2026-10-26T01:00:00+00:00"]
    # From inside the repeated hour (02:15 CET, after the CEST 02:30): no second 02:30.
    assert day("2026-10-25T01:15:00+00:00", 1) == [
        "2026-10-26T01:30:00+00:00" if len(wall) == 1 else "2026-10-25T02:00:00+00:00"]
    # The latest missed fire, found backwards after a long downtime, is a real fire time.
    latest = berlin.latest(at("2020-01-01T01:30:00+00:00"), at("2026-03-29T01:00:05+00:00"))
    assert latest == at("2026-03-29T01:00:00+00:00")


@pytest.mark.parametrize("cron", ["0 * * * *", "0 0 * * * *"])
def test_hourly_schedules_fire_on_every_real_hour_across_changes(cron: str) -> None:
    berlin = Cron(cron, "Europe/Berlin")
    autumn = berlin.next_fires(at("2026-10-24T21:59:59+00:00"), 30)
    assert sum(f < at("2026-10-25T23:00:00+00:00") for f in autumn) == 25  # 25-hour day
    spring = berlin.next_fires(at("2026-03-28T22:59:59+00:00"), 30)
    assert sum(f < at("2026-03-29T22:00:00+00:00") for f in spring) == 23  # 23-hour day


# --- firing, with an injected clock -----------------------------------------------------------


def test_a_fire_time_makes_one_job_then_the_schedule_moves_on(database_url: str) -> None:
    async def scenario(store: Store) -> None:
        clock = Clock("2030-01-01T10:00:30+00:00")
        scheduler = Scheduler(store, LEASES, clock=clock)
        await deploy(store)
        await add_schedule(store, clock, "minutely", "* * * * *")
        clock.set("2030-01-01T10:00:59+00:00")
        await scheduler.tick()
        assert await runs(store, "minutely") == []
        for moment in ("2030-01-01T10:01:00+00:00", "2030-01-01T10:01:00.5+00:00",
                       "2030-01-01T10:01:59+00:00"):
            clock.set(moment)
            await scheduler.tick()
        [fire] = await runs(store, "minutely")
        assert fire["fire_at"] == "2030-01-01T10:01:00Z" and fire["status"] == "queued"
        job = await store.get_job("default", fire["job_id"])
        assert (job.script_path, job.tag) == ("f/s", "identity")
        schedule = await store.get_schedule("default", "minutely")
        assert schedule.next_fire_at == at("2030-01-01T10:02:00+00:00")
    run(database_url, scenario)


@pytest.mark.parametrize("cron", ["0 2 * * *", "0 0 2 * * *"])
def test_spring_forward_a_skipped_local_time_fires_right_after_the_gap(
        database_url: str, cron: str) -> None:
    # Europe/Paris, 2024-03-31: 02:00 local does not exist (clocks go from 02:00 to 03:00).
    async def scenario(store: Store) -> None:
        clock = Clock("2024-03-30T12:00:00+00:00")
        scheduler = Scheduler(store, LEASES, clock=clock)
        await deploy(store)
        await add_schedule(store, clock, "two-am", cron, timezone="Europe/Paris")
        await sweep(scheduler, clock, "2024-03-30T12:00:00+00:00", "2024-04-01T12:00:00+00:00",
                    timedelta(minutes=10))
        assert await fire_times(store, "two-am") == [
            "2024-03-31T01:00:00Z",  # 03:00 CEST, the first instant after the gap
            "2024-04-01T00:00:00Z",  # 02:00 CEST
        ]
    run(database_url, scenario)


@pytest.mark.parametrize("timezone,cron,day,expected", [
    # America/New_York, 2024-11-03: 01:00-02:00 local happens twice (EDT, then EST).
    ("America/New_York", "30 1 * * *", "2024-11-03",
     ["2024-11-03T05:30:00Z", "2024-11-04T06:30:00Z"]),
    # Europe/Paris, 2024-10-27: 02:00-03:00 local happens twice (CEST, then CET).
    ("Europe/Paris", "30 2 * * *", "2024-10-27",
     ["2024-10-27T00:30:00Z", "2024-10-28T01:30:00Z"]),
])
def test_fall_back_a_repeated_local_time_fires_once(
        database_url: str, timezone: str, cron: str, day: str, expected: list[str]) -> None:
    async def scenario(store: Store) -> None:
        start = at(f"{day}T00:00:00+00:00") - timedelta(hours=12)
        clock = Clock(start.isoformat())
        scheduler = Scheduler(store, LEASES, clock=clock)
        await deploy(store)
        await add_schedule(store, clock, "repeat", cron, timezone=timezone)
        await sweep(scheduler, clock, start.isoformat(),
                    (start + timedelta(days=2, hours=6)).isoformat(), timedelta(minutes=10))
        assert await fire_times(store, "repeat") == expected
        zone = ZoneInfo(timezone)
        local = [at(t.replace("Z", "+00:00")).astimezone(zone).strftime("%H:%M")
                 for t in expected]
        assert set(local) == {cron.split()[1].zfill(2) + ":" + cron.split()[0]}
    run(database_url, scenario)


def test_after_downtime_one_catch_up_run_for_the_latest_missed_time(
        database_url: str, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario(store: Store) -> None:
        clock = Clock("2030-01-01T10:00:30+00:00")
        scheduler = Scheduler(store, LEASES, clock=clock)
        await deploy(store)
        await add_schedule(store, clock, "minutely", "* * * * *")
        await add_schedule(store, clock, "secondly", "* * * * * *")
        clock.set("2030-01-01T10:01:00+00:00")
        await scheduler.tick()
        await add_schedule(store, clock, "daily", "0 11 * * *")
        caplog.set_level("INFO", logger="tagrun.scheduler")
        # Down for three hours and a bit (no tick), then back:
        clock.set("2030-01-01T13:17:20.250+00:00")
        await scheduler.tick()
        await scheduler.tick()
        assert await fire_times(store, "minutely") == ["2030-01-01T10:01:00Z",
                                                       "2030-01-01T13:17:00Z"]
        assert await fire_times(store, "secondly") == ["2030-01-01T10:01:00Z",
                                                       "2030-01-01T13:17:20Z"]
        minutely = await store.get_schedule("default", "minutely")
        assert minutely.next_fire_at == at("2030-01-01T13:18:00+00:00")
        assert await fire_times(store, "daily") == ["2030-01-01T11:00:00Z"]
        caught_up = {r.__dict__["schedule"] for r in caplog.records
                     if r.getMessage() == "schedule.caught_up"}
        assert caught_up == {"minutely", "secondly", "daily"}  # daily: its one time missed
        # A week away: still one run.
        clock.set("2030-01-08T09:00:00.5+00:00")
        await scheduler.tick()
        assert (await fire_times(store, "secondly"))[2:] == ["2030-01-08T09:00:00Z"]
    run(database_url, scenario)


def test_two_schedulers_on_one_database_make_one_job_per_fire_time(
        database_url: str) -> None:
    async def scenario(store: Store) -> None:
        other_pool = await create_pool(database_url, size=4)
        try:
            other = Store(other_pool)
            clock = Clock("2030-01-01T10:00:00.5+00:00")
            schedulers = [Scheduler(s, LEASES, clock=clock) for s in (store, other, other)]
            await deploy(store)
            names = [f"s{i}" for i in range(15)]
            for name in names:
                await add_schedule(store, clock, name, "* * * * * *")
            for second in range(1, 9):
                clock.set(at("2030-01-01T10:00:00+00:00") + timedelta(seconds=second))
                await asyncio.gather(*(s.tick() for s in schedulers for _ in range(2)))
            expected = [f"2030-01-01T10:00:0{s}Z" for s in range(1, 9)]
            job_ids = []
            for name in names:
                fires = await runs(store, name)
                assert [f["fire_at"] for f in fires] == expected
                job_ids += [f["job_id"] for f in fires]
            jobs = await store.list_jobs("default", before=2**62, status=None, tag=None,
                                         script="f/s", limit=1000)
            assert sorted(j.id for j in jobs) == sorted(job_ids), "a job without its fire"
            assert len(set(job_ids)) == len(names) * 8
        finally:
            await other_pool.close()
    run(database_url, scenario)


def test_a_disabled_schedule_does_not_fire(database_url: str) -> None:
    async def scenario(store: Store) -> None:
        clock = Clock("2030-01-01T10:00:30+00:00")
        scheduler = Scheduler(store, LEASES, clock=clock)
        await deploy(store)
        await add_schedule(store, clock, "off", "* * * * *", enabled=False)
        await sweep(scheduler, clock, "2030-01-01T10:00:30+00:00", "2030-01-01T10:05:00+00:00",
                    timedelta(seconds=30))
        assert await runs(store, "off") == []
    run(database_url, scenario)


def test_a_fire_that_cannot_make_its_job_is_recorded_and_the_schedule_goes_on(
        database_url: str) -> None:
    async def scenario(store: Store) -> None:
        clock = Clock("2030-01-01T10:00:30+00:00")
        scheduler = Scheduler(store, LEASES, clock=clock)
        await add_schedule(store, clock, "orphan", "* * * * *", script="f/never-deployed")
        await sweep(scheduler, clock, "2030-01-01T10:01:00+00:00", "2030-01-01T10:02:00+00:00",
                    timedelta(seconds=30))
        fires = await runs(store, "orphan")
        assert [f["status"] for f in fires] == ["error", "error"]
        assert "f/never-deployed" in fires[0]["message"] and fires[0]["job_id"] is None
    run(database_url, scenario)


# --- overlap policies -------------------------------------------------------------------------


async def overlap_setup(store: Store, overlap: str) -> tuple[Scheduler, Clock]:
    clock = Clock("2030-01-01T10:00:00.5+00:00")
    await deploy(store)
    await add_schedule(store, clock, overlap, "* * * * * *", overlap=overlap)
    return Scheduler(store, LEASES, clock=clock), clock


async def fire_at_second(scheduler: Scheduler, clock: Clock, second: int) -> None:
    clock.set(at("2030-01-01T10:00:00+00:00") + timedelta(seconds=second))
    await scheduler.tick()


async def finish(store: Store, job: ClaimedRow, status: str = "succeeded") -> None:
    await store.complete_job(job.worker, job.id, job.attempt, status, None, None, 0)


def test_queue_runs_wait_for_the_previous_one_and_none_is_lost(database_url: str) -> None:
    async def scenario(store: Store) -> None:
        scheduler, clock = await overlap_setup(store, "queue")
        for second in (1, 2, 3):
            await fire_at_second(scheduler, clock, second)
        first, second_, third = await runs(store, "queue")
        assert [r["status"] for r in (first, second_, third)] == ["queued"] * 3
        assert second_["message"] == f"waits for run {first['job_id']}"
        order = []
        for _ in range(3):
            claimed = await store.claim_jobs("w", ["identity"], 10, 60)
            assert len(claimed) == 1, "two runs of one schedule at once"
            order.append(claimed[0].id)
            await finish(store, claimed[0])
        assert order == [first["job_id"], second_["job_id"], third["job_id"]]
    run(database_url, scenario)


def test_skip_drops_a_fire_while_the_previous_run_is_active_and_shows_it(
        database_url: str) -> None:
    async def scenario(store: Store) -> None:
        scheduler, clock = await overlap_setup(store, "skip")
        await fire_at_second(scheduler, clock, 1)
        [running] = await store.claim_jobs("w", ["identity"], 10, 60)
        await fire_at_second(scheduler, clock, 2)
        await finish(store, running)
        await fire_at_second(scheduler, clock, 3)
        fires = await runs(store, "skip")
        assert [(f["fire_at"][-3:], f["status"]) for f in fires] == [
            ("01Z", "succeeded"), ("02Z", "skipped"), ("03Z", "queued")]
        assert fires[1]["message"] == f"run {running.id} was still queued or running"
        assert fires[1]["job_id"] is None
    run(database_url, scenario)


def test_replace_cancels_the_running_and_the_queued_run(database_url: str) -> None:
    async def scenario(store: Store) -> None:
        scheduler, clock = await overlap_setup(store, "replace")
        await fire_at_second(scheduler, clock, 1)
        [running] = await store.claim_jobs("w", ["identity"], 10, 60)
        await fire_at_second(scheduler, clock, 2)
        old = await store.get_job("default", running.id)
        assert (old.status, old.cancel_requested) == ("running", True)
        # The new run waits until the old one's process is gone.
        assert await store.claim_jobs("w", ["identity"], 10, 60) == []
        await fire_at_second(scheduler, clock, 3)
        first, second, third = await runs(store, "replace")
        assert second["status"] == "cancelled", "a queued run is cancelled at once"
        assert third["message"] == f"replaced run {second['job_id']}"
        # The holder hears of the cancel, kills the process and reports it:
        cancel, _ = await store.extend_leases("w", [(running.id, running.attempt)], 60)
        assert cancel == [running.id]
        await finish(store, running, "cancelled")
        [new] = await store.claim_jobs("w", ["identity"], 10, 60)
        assert new.id == third["job_id"]
        assert [f["status"] for f in await runs(store, "replace")] == [
            "cancelled", "cancelled", "running"]
    run(database_url, scenario)


# --- built-in maintenance ---------------------------------------------------------------------


def test_builtins_are_seeded_once_and_their_runs_are_jobs(database_url: str) -> None:
    async def scenario(store: Store) -> None:
        now = datetime.now(UTC)
        clock = Clock(now.isoformat())
        scheduler = Scheduler(store, LEASES, clock=clock)
        await scheduler.seed_builtins()
        await scheduler.seed_builtins()
        listed = await store.list_schedules("default", "", 100)
        assert sorted(s.name for s in listed) == sorted(b.name for b in BUILTINS)
        # A finished job, an expired agent token and a silent agent, all old by a month on:
        [job_id] = await store.insert_jobs("default", [(await _identity_job())])
        [claimed] = await store.claim_jobs("w", ["identity"], 1, 60)
        await finish(store, claimed)
        await store.create_agent_token("old", "g", ["t"], "", now - timedelta(days=1))
        await store.create_agent_token("live", "g", ["t"], "", now + timedelta(days=90))
        await store.register_worker("gone-agent", "agent", "g", ["t"], None, "0")
        await store.record_worker_event("gone-agent", "paused", "disk swap", "superadmin")
        clock.set(now + timedelta(days=31))
        # Retention first (else it would delete the other maintenance runs, finished "a
        # month ago" by the moved clock), then the others.
        by_task = {s.builtin: s for s in listed}
        for tasks in (["job_retention"], ["idempotency_keys", "expired_agent_tokens",
                                          "stale_agents"]):
            for task in tasks:
                await scheduler.fire(by_task[task], clock.now)
            # A store of its own, as in another process: no claim state cached from before.
            worker = MaintenanceWorker(Store(store.pool), _NoListener(),  # type: ignore[arg-type]
                                       lease_s=60, retention_days=30, clock=clock)
            while await worker.run_once():
                pass
        maintenance = await store.list_jobs("default", before=2**62, status=None,
                                            tag=MAINTENANCE_TAG, script=None, limit=100)
        ran = {j.content: j for j in maintenance}
        assert {task: (j.status, j.result) for task, j in ran.items()} == {
            "job_retention": ("succeeded", {"jobs_deleted": 1, "fires_deleted": 1,
                                            "retention_days": 30}),
            "idempotency_keys": ("succeeded", {"keys_deleted": 0}),
            "expired_agent_tokens": ("succeeded", {"tokens_deleted": 1}),
            "stale_agents": ("succeeded", {"records_deleted": 1, "history_deleted": 1}),
        }
        with pytest.raises(NotFound):
            await store.get_job("default", job_id)
        assert [t["jti"] for t in await store.list_agent_tokens(True)] == ["live"]
        logs = await store.read_logs("default", ran["job_retention"].id, 0)
        assert logs["data"].startswith("deleted 1 finished jobs") and logs["done"]
        fires = await runs(store, "tagrun.stale-agents")
        assert [f["status"] for f in fires] == ["succeeded"]
    run(database_url, scenario)


async def _identity_job() -> Any:
    from tagrun.server.store import NewJob

    return NewJob(None, None, "identity", "", {}, "identity", 0, None, None, 1)


class _NoListener:
    """The maintenance worker's run_once needs no listener."""


# --- the API's checks (shared server) ---------------------------------------------------------


@pytest.fixture
def ws(api: httpx.Client) -> Iterator[str]:
    """A workspace of the test's own, with a script `f/s` that reads $args[region]."""
    workspace = f"sch-{uuid.uuid4().hex[:10]}"
    assert api.post("/api/workspaces", json={"id": workspace}).status_code == 201
    assert api.post(f"/api/w/{workspace}/scripts", json={
        "path": "f/s", "language": "identity", "content": ""}).status_code == 201
    yield workspace


def schedule(name: str = "nightly", **fields: Any) -> dict[str, Any]:
    return {"name": name, "cron": "0 3 * * *", "script": "f/s", **fields}


def error(response: httpx.Response, status: int) -> dict[str, str]:
    assert response.status_code == status, response.text
    found: dict[str, str] = response.json()["error"]
    return found


@pytest.mark.parametrize("fields,code,named", [
    ({"cron": "61 * * * *"}, "invalid_cron", "61 * * * *"),
    ({"cron": "* * * * * * *"}, "invalid_cron", "7 fields"),
    ({"cron": "0 0 30 2 *"}, "invalid_cron", "day-of-month"),
    ({"timezone": "Mars/Olympus"}, "unknown_timezone", "Mars/Olympus"),
    ({"script": "f/missing"}, "unknown_script", "f/missing"),
    ({"overlap": "sometimes"}, "invalid_overlap", "sometimes"),
    ({"tag": "gpu-$args[region]"}, "invalid_tag", "region"),
    ({"name": "Bad Name"}, "invalid_input", "Bad Name"),
    ({"name": "tagrun.mine"}, "invalid_input", "built-in"),
])
def test_invalid_schedules_are_400_with_a_clear_message(
        api: httpx.Client, ws: str, fields: dict[str, Any], code: str, named: str) -> None:
    found = error(api.post(f"/api/w/{ws}/schedules", json=schedule(**fields)), 400)
    assert found["code"] == code and named in found["message"], found
    assert api.get(f"/api/w/{ws}/schedules").json()["schedules"] == []


def test_create_show_change_and_delete_a_schedule(api: httpx.Client, ws: str) -> None:
    created = api.post(f"/api/w/{ws}/schedules", json=schedule(
        cron="0 9 * * 1-5", timezone="Europe/Paris", args={"region": "eu"},
        tag="gpu-$args[region]", overlap="skip", timeout_s=30))
    assert created.status_code == 201, created.text
    view = created.json()
    assert (view["enabled"], view["builtin"], view["overlap"], view["last_runs"]) == \
        (True, False, "skip", [])
    paris = ZoneInfo("Europe/Paris")
    fires = [at(f.replace("Z", "+00:00")).astimezone(paris) for f in view["next_fires"]]
    assert len(fires) == 5 and fires == sorted(fires)
    assert all((f.hour, f.minute, f.weekday() < 5) == (9, 0, True) for f in fires)
    assert error(api.post(f"/api/w/{ws}/schedules", json=schedule()), 409)["code"] == \
        "schedule_exists"

    off = api.patch(f"/api/w/{ws}/schedules/nightly", json={"enabled": False}).json()
    assert (off["enabled"], off["next_fires"]) == (False, [])
    on = api.patch(f"/api/w/{ws}/schedules/nightly", json={"enabled": True}).json()
    assert on["next_fires"] == view["next_fires"]
    found = error(api.patch(f"/api/w/{ws}/schedules/nightly", json={"timezone": "Nowhere/X"}),
                  400)
    assert "Nowhere/X" in found["message"]
    moved = api.patch(f"/api/w/{ws}/schedules/nightly", json={"cron": "*/30 * * * * *",
                                                               "tag": None}).json()
    assert moved["cron"] == "*/30 * * * * *" and moved["tag"] is None
    assert moved["timezone"] == "Europe/Paris" and moved["args"] == {"region": "eu"}

    listed = api.get(f"/api/w/{ws}/schedules").json()["schedules"]
    assert [s["name"] for s in listed] == ["nightly"]
    assert api.delete(f"/api/w/{ws}/schedules/nightly").status_code == 200
    assert error(api.get(f"/api/w/{ws}/schedules/nightly"), 404)["code"] == \
        "schedule_not_found"


def test_builtin_schedules_are_listed_adjustable_and_undeletable(
        api: httpx.Client, server: TagrunProcess) -> None:
    listed = api.get("/api/w/default/schedules").json()["schedules"]
    builtins = {s["name"]: s for s in listed if s["builtin"]}
    assert set(builtins) == {b.name for b in BUILTINS}
    assert all(s["description"] and len(s["next_fires"]) == 5 for s in builtins.values())
    name = "tagrun.job-retention"
    found = error(api.delete(f"/api/w/default/schedules/{name}"), 409)
    assert found["code"] == "schedule_builtin" and "disable" in found["message"]
    try:
        changed = api.patch(f"/api/w/default/schedules/{name}",
                            json={"enabled": False, "cron": "15 4 * * *"}).json()
        assert (changed["enabled"], changed["cron"]) == (False, "15 4 * * *")
        assert error(api.patch(f"/api/w/default/schedules/{name}",
                               json={"script": "f/s"}), 400)
        token = api.post("/api/tokens", json={"workspace": "default"}).json()["token"]
        with api_client(server.url, token) as member:
            assert member.get("/api/w/default/schedules").status_code == 200
            assert error(member.patch(f"/api/w/default/schedules/{name}",
                                      json={"enabled": True}), 403)
    finally:
        builtin = next(b for b in BUILTINS if b.name == name)
        api.patch(f"/api/w/default/schedules/{name}", json={"enabled": True,
                                                            "cron": builtin.cron})
    assert api.get(f"/api/w/default/schedules/{name}").json()["enabled"] is True


def test_a_schedule_broken_by_a_redeploy_can_be_disabled_but_not_enabled(
        api: httpx.Client, ws: str) -> None:
    def deploy_tag(tag: str) -> None:
        assert api.post(f"/api/w/{ws}/scripts", json={
            "path": "f/tagged", "language": "identity", "content": "", "tag": tag,
        }).status_code == 201
    deploy_tag("q-$args[zone]")
    assert api.post(f"/api/w/{ws}/schedules", json=schedule(
        script="f/tagged", args={"zone": "z1"})).status_code == 201
    deploy_tag("q-$args[rack]")  # its fires would now fail: the args have no `rack`
    off = api.patch(f"/api/w/{ws}/schedules/nightly", json={"enabled": False})
    assert off.status_code == 200, off.text
    found = error(api.patch(f"/api/w/{ws}/schedules/nightly", json={"enabled": True}), 400)
    assert "rack" in found["message"]
    fixed = api.patch(f"/api/w/{ws}/schedules/nightly",
                      json={"enabled": True, "args": {"zone": "z1", "rack": "r2"}})
    assert fixed.status_code == 200 and fixed.json()["enabled"] is True
    # Disabled or not, a schedule is never given a script that does not exist.
    assert api.patch(f"/api/w/{ws}/schedules/nightly",
                     json={"enabled": False}).status_code == 200
    missing = error(api.patch(f"/api/w/{ws}/schedules/nightly", json={"script": "f/none"}), 400)
    assert missing["code"] == "unknown_script" and "f/none" in missing["message"]
    assert api.get(f"/api/w/{ws}/schedules/nightly").json()["script"] == "f/tagged"


def test_a_workspace_token_sees_only_its_own_schedules(
        api: httpx.Client, ws: str, server: TagrunProcess) -> None:
    assert api.post(f"/api/w/{ws}/schedules", json=schedule()).status_code == 201
    token = api.post("/api/tokens", json={"workspace": "default"}).json()["token"]
    with api_client(server.url, token) as member:
        assert error(member.get(f"/api/w/{ws}/schedules"), 403)
        assert error(member.delete(f"/api/w/{ws}/schedules/nightly"), 403)
    assert api.get(f"/api/w/{ws}/schedules/nightly").status_code == 200
