"""The store's guarantees, checked against a real PostgreSQL database of the test's own."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import pytest

from tagrun.server.errors import CompletionConflict, LeaseLost
from tagrun.server.store import ClaimedRow, NewJob, Store, create_pool
from tagrun.server.store.leases import LITERAL_LIMITS
from tagrun.shared.loglines import iso_ms

Scenario = Callable[[Store], Awaitable[None]]


def run(database_url: str, scenario: Scenario, *, size: int = 4) -> None:
    async def go() -> None:
        pool = await create_pool(database_url, size=size)
        try:
            await scenario(Store(pool))
        finally:
            await pool.close()
    asyncio.run(go())


def job(tag: str = "t", priority: int = 0, run_at: datetime | None = None,
        max_attempts: int = 3) -> NewJob:
    return NewJob(None, None, "identity", "", {}, tag, priority, run_at, None, max_attempts)


def test_claims_take_higher_priority_then_older_jobs_first(database_url: str) -> None:
    async def scenario(store: Store) -> None:
        past = datetime.now(UTC) - timedelta(minutes=1)
        low_old, high, low_new = await store.insert_jobs(
            "default", [job(priority=0, run_at=past), job(priority=5), job(priority=0)])
        claimed = await store.claim_jobs("w", ["t"], 10, 60)
        assert [j.id for j in claimed] == [high, low_old, low_new]
    run(database_url, scenario)


def test_claims_match_tags_exactly_and_skip_future_jobs(database_url: str) -> None:
    async def scenario(store: Store) -> None:
        later = datetime.now(UTC) + timedelta(hours=1)
        [gpu, _other, _delayed] = await store.insert_jobs(
            "default", [job("gpu"), job("gpu-eu"), job("gpu", run_at=later)])
        assert [j.id for j in await store.claim_jobs("w", ["gpu"], 10, 60)] == [gpu]
        assert await store.claim_jobs("w", ["gpu"], 10, 60) == []
    run(database_url, scenario)


def test_concurrent_claimers_never_get_the_same_job(database_url: str) -> None:
    async def scenario(store: Store) -> None:
        ids = await store.insert_jobs("default", [job() for _ in range(300)])

        async def claimer(name: str) -> list[int]:
            got: list[int] = []
            while batch := await store.claim_jobs(name, ["t"], 7, 60):
                got += [j.id for j in batch]
            return got
        results = await asyncio.gather(*(claimer(f"w{i}") for i in range(4)))
        every = [i for r in results for i in r]
        assert sorted(every) == ids
    run(database_url, scenario)


def test_writes_from_an_old_attempt_or_another_holder_change_nothing(database_url: str) -> None:
    async def scenario(store: Store) -> None:
        [job_id] = await store.insert_jobs("default", [job()])
        [claimed] = await store.claim_jobs("w1", ["t"], 1, 60)
        attempt = claimed.attempt
        with pytest.raises(LeaseLost):
            await store.complete_job("w2", job_id, attempt, "succeeded", 1, None, 5)
        with pytest.raises(LeaseLost):
            await store.complete_job("w1", job_id, attempt + 1, "succeeded", 1, None, 5)
        with pytest.raises(LeaseLost):
            await store.append_logs("w2", job_id, attempt, 0, "intruder")
        assert (await store.get_job("default", job_id)).status == "running"
        done = await store.complete_job("w1", job_id, attempt, "succeeded", 1, None, 5)
        assert (done["status"], done["repeat"]) == ("succeeded", False)
        # A repeat of the same completion is accepted and records nothing new; another
        # outcome for the recorded attempt is a conflict.
        again = await store.complete_job("w1", job_id, attempt, "succeeded", 1, None, 5)
        assert (again["status"], again["repeat"]) == ("succeeded", True)
        with pytest.raises(CompletionConflict):
            await store.complete_job("w1", job_id, attempt, "succeeded", 2, None, 5)
        final = await store.get_job("default", job_id)
        assert (final.status, final.result) == ("succeeded", 1)
        assert (await store.read_logs("default", job_id, 0))["data"] == ""
    run(database_url, scenario)


def test_log_appends_are_idempotent_by_offset(database_url: str) -> None:
    async def scenario(store: Store) -> None:
        [job_id] = await store.insert_jobs("default", [job()])
        await store.claim_jobs("w", ["t"], 1, 60)
        assert await store.append_logs("w", job_id, 1, 0, "héllo ") == 6
        assert await store.append_logs("w", job_id, 1, 0, "héllo ") == 6  # resent
        assert await store.append_logs("w", job_id, 1, 6, "wörld") == 11
        logs = await store.read_logs("default", job_id, 0)
        # Its one line is still being written: a reader of lines asks again from 0.
        assert logs == {"data": "héllo wörld", "offset": 11, "done": False, "lines": [],
                        "lines_end": 0}
        assert (await store.read_logs("default", job_id, 3))["data"] == "lo wörld"
    run(database_url, scenario)


def test_a_log_that_fills_the_cap_exactly_still_marks_what_follows(database_url: str) -> None:
    async def scenario(store: Store) -> None:
        [job_id] = await store.insert_jobs("default", [job()])
        await store.claim_jobs("w", ["t"], 1, 60)
        calls: list[int] = []
        offset = 0
        for data in ("x" * 10, "y" * 5, "z" * 5, "more"):
            offset = await store.append_logs("w", job_id, 1, offset, data, max_chars=10,
                                             on_truncated=lambda: calls.append(job_id))
        logs = (await store.read_logs("default", job_id, 0))["data"]
        assert logs == "x" * 10 + "\n[tagrun: log truncated here: it reached 10 characters]\n"
        assert offset == 24 and calls == [job_id]  # told once, however much follows
        assert (await store.get_job("default", job_id)).log_truncated is True
    run(database_url, scenario)


def test_lines_keep_their_marks_and_the_cap_cuts_the_marks_with_the_text(
    database_url: str
) -> None:
    async def scenario(store: Store) -> None:
        [job_id] = await store.insert_jobs("default", [job()])
        await store.claim_jobs("w", ["t"], 1, 60)
        t = 1_700_000_000_000
        await store.append_logs("w", job_id, 1, 0, "out\nerr\n", max_chars=14,
                                marks=[(0, t, 0), (4, t + 5, 1)])
        await store.append_logs("w", job_id, 1, 8, "a long line\nnext\n", max_chars=14,
                                marks=[(0, t + 9, 0), (12, t + 10, 0)])
        logs = await store.read_logs("default", job_id, 0)
        assert [(line["stream"], line["text"]) for line in logs["lines"]] == [
            ("stdout", "out"), ("stderr", "err"), ("stdout", "a long"),
            ("tagrun", "[tagrun: log truncated here: it reached 14 characters]")]
        assert [line["at"] for line in logs["lines"][:3]] == [
            iso_ms(t), iso_ms(t + 5), iso_ms(t + 9)]
        assert logs["lines_end"] == logs["offset"] == len(logs["data"])
        later = await store.read_logs("default", job_id, 4)  # from a line's start
        assert [line["text"] for line in later["lines"]][:2] == ["err", "a long"]
    run(database_url, scenario)


def test_expired_lease_requeues_then_dead_letters(database_url: str) -> None:
    async def scenario(store: Store) -> None:
        [job_id] = await store.insert_jobs("default", [job(max_attempts=2)])
        for attempt, expected in ((1, "queued"), (2, "failed")):
            [claimed] = await store.claim_jobs("w", ["t"], 1, 0.01)
            assert claimed.attempt == attempt
            await asyncio.sleep(0.05)  # let the 10 ms lease run out
            assert await store.expire_leases() == [(job_id, expected)]
            state = await store.get_job("default", job_id)
            assert state.status == expected
            assert state.error is not None and state.error["kind"] == "lease_expired"
            with pytest.raises(LeaseLost):  # the late completion is refused
                await store.complete_job("w", job_id, attempt, "succeeded", 1, None, 5)
        assert await store.claim_jobs("w", ["t"], 1, 60) == []
    run(database_url, scenario)


def test_released_jobs_go_back_without_using_an_attempt(database_url: str) -> None:
    async def scenario(store: Store) -> None:
        [job_id] = await store.insert_jobs("default", [job()])
        [claimed] = await store.claim_jobs("w", ["t"], 1, 60)
        assert await store.release_jobs("w", [(job_id, claimed.attempt)]) == [job_id]
        [again] = await store.claim_jobs("w", ["t"], 1, 60)
        assert again.attempt == 1
    run(database_url, scenario)


def _capped_run(database_url: str, *, jobs: list[NewJob], claimers: int, inline: bool,
                settings: dict[str, int], record_order: bool = False) -> tuple[int, list[int]]:
    """Claim and complete every job with several concurrent claimers while a sampler
    watches the running count; returns (most running seen, job ids in start order)."""
    most = 0
    started: list[int] = []

    async def scenario(store: Store) -> None:
        nonlocal most
        for key, value in settings.items():
            await store.put_setting(key, value)
        await store.insert_jobs("default", jobs)
        done = asyncio.Event()

        async def sampler() -> None:
            nonlocal most
            while not done.is_set():
                running = await store.pool.fetchval(
                    "SELECT count(*) FROM jobs WHERE status = 'running'")
                most = max(most, running)
                await asyncio.sleep(0)

        order = asyncio.Lock()

        async def claim(name: str) -> list[ClaimedRow]:
            if not record_order:
                return await store.claim_jobs(name, ["t"], 2, 60, inline=inline)
            async with order:  # so that `started` is in the order the claims happened
                claimed = await store.claim_jobs(name, ["t"], 2, 60, inline=inline)
                started.extend(j.id for j in claimed)
                return claimed

        async def claimer(name: str) -> None:
            idle = 0
            while idle < 20:
                claimed = await claim(name)
                idle = 0 if claimed else idle + 1
                await asyncio.sleep(0.005)
                for job in claimed:
                    await store.complete_job(name, job.id, job.attempt, "succeeded",
                                             None, None, 5)
        watch = asyncio.create_task(sampler())
        await asyncio.gather(*(claimer(f"w{i}") for i in range(claimers)))
        done.set()
        await watch
        left = await store.pool.fetchval("SELECT count(*) FROM jobs WHERE status <> 'succeeded'")
        assert left == 0, "every job should have run"
    run(database_url, scenario)
    return most, started


def test_task_max_concurrent_is_never_exceeded(database_url: str) -> None:
    most, _ = _capped_run(database_url, jobs=[job() for _ in range(60)], claimers=5,
                          inline=False, settings={"task_max_concurrent": 3})
    assert 1 <= most <= 3


def test_inline_cap_applies_to_inline_claimers_only(database_url: str) -> None:
    most, _ = _capped_run(database_url, jobs=[job() for _ in range(40)], claimers=4,
                          inline=True, settings={"task_inline_max_concurrent": 2})
    assert most <= 2


def test_script_concurrency_limit_holds_and_older_jobs_go_first(database_url: str) -> None:
    capped = [NewJob("f/x", 1, "identity", "", {}, "t", 0, None, None, 3, "default/f/x", 2)
              for _ in range(30)]
    most, started = _capped_run(database_url, jobs=capped, claimers=4, inline=False,
                                settings={}, record_order=True)
    assert most <= 2
    assert started == sorted(started), "within a capped script, older jobs start first"


def test_claims_leave_dead_rows_that_the_queue_vacuum_removes(database_url: str) -> None:
    async def scenario(store: Store) -> None:
        # Autovacuum, if it came round now, would remove the dead rows first (this database
        # is the test's own).
        await store.pool.execute("ALTER TABLE queue SET (autovacuum_enabled = false)")
        await store.insert_jobs("default", [job("churn")] * 6000)
        while await store.claim_jobs("w", ["churn"], 1000, 60):
            pass
        # A backend hands its table statistics on at most once a second, and an idle one
        # only after 10 s: the claims' one connection is told to hand them on now.
        await store.pool.execute("SELECT pg_stat_force_next_flush()")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while (vacuumed := await store.vacuum_queue(5000)) is None:
            assert loop.time() < deadline, "the claims' dead rows never showed in the stats"
            await asyncio.sleep(0.1)
        assert vacuumed >= 5000
        dead = await store.pool.fetchval(
            "SELECT n_dead_tup FROM pg_stat_user_tables WHERE relid = 'queue'::regclass")
        assert dead < 100
        assert await store.vacuum_queue(5000) is None  # nothing left to do: no vacuum
    run(database_url, scenario, size=1)


def test_a_claim_of_a_backlog_is_planned_once_per_connection_and_count(database_url: str
                                                                       ) -> None:
    """With a backlog queued, PostgreSQL plans a claim of a given count of slots a few times,
    then keeps one plan (planning every claim cost as much as running it); past
    LITERAL_LIMITS slots the count travels as a parameter. Either way a claim takes what it
    may, best first."""
    async def scenario(store: Store) -> None:
        # 600 in one batch: the queue's statistics are refreshed (ANALYZE_AFTER_BATCH).
        ids = await store.insert_jobs("default", [job(priority=n % 3) for n in range(600)])
        priority = {job_id: n % 3 for n, job_id in enumerate(ids)}
        best_first = sorted(ids, key=lambda i: (-priority[i], i))
        taken: list[int] = []
        for _ in range(10):
            taken += [j.id for j in await store.claim_jobs("w", ["t"], 2, 60)]
        assert taken == best_first[:20]
        plans = await store.pool.fetchrow(
            "SELECT generic_plans, custom_plans FROM pg_prepared_statements "
            "WHERE statement LIKE '%LIMIT 2 FOR UPDATE OF q SKIP LOCKED%' "
            "AND statement NOT LIKE '%pg_prepared_statements%'")
        assert plans is not None, "the claim of 2 slots is not a statement of its own"
        assert plans["generic_plans"] >= 4 and plans["custom_plans"] <= 6, dict(plans)
        # More slots than LITERAL_LIMITS: the same claim, its count a parameter.
        many = await store.claim_jobs("w", ["t"], LITERAL_LIMITS + 1, 60)
        assert [j.id for j in many] == best_first[20:20 + LITERAL_LIMITS + 1]
        rest = best_first[20 + LITERAL_LIMITS + 1:]
        while batch := await store.claim_jobs("w", ["t"], LITERAL_LIMITS, 60):
            assert [j.id for j in batch] == rest[:LITERAL_LIMITS]
            rest = rest[LITERAL_LIMITS:]
        assert rest == []
    run(database_url, scenario, size=1)
