"""Completions written together (store/completions.py): outcomes that arrive while one is
being written leave in one statement, yet each job is fenced, recorded and refused on its
own, against a real PostgreSQL database of the test's own."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tagrun.server.errors import InvalidInput, LeaseLost
from tagrun.server.store import NewJob, Store
from tests.server.test_store import run


def job(content: str = "", max_attempts: int = 3) -> NewJob:
    return NewJob(None, None, "identity", content, {}, "t", 0, None, None, max_attempts)


async def settle(calls: list[Any]) -> list[Any]:
    """Run the completions at once (they queue before the first is written); each one's
    answer or error."""
    return await asyncio.gather(*calls, return_exceptions=True)


def test_completions_arriving_together_are_one_transaction_of_many_holders(
        database_url: str) -> None:
    async def scenario(store: Store) -> None:
        for name in ("w1", "w2"):
            await store.register_worker(name, "worker", "", ["t"], None, "test")
        ids = await store.insert_jobs("default", [job() for _ in range(8)])
        held = [*await store.claim_jobs("w1", ["t"], 4, 60),
                *await store.claim_jobs("w2", ["t"], 4, 60)]
        assert sorted(j.id for j in held) == ids
        answers = await settle([store.complete_job(j.worker, j.id, j.attempt, "succeeded",
                                                   {"n": j.id}, None, 5) for j in held])
        assert [(a["id"], a["status"], a["repeat"]) for a in answers] == \
            [(j.id, "succeeded", False) for j in held]
        rows = await store.pool.fetch(
            "SELECT id, result, finished_at, attempts FROM jobs ORDER BY id")
        assert [r["result"] for r in rows] == [{"n": i} for i in ids]
        # One statement, one commit: the same transaction time on every job.
        assert len({r["finished_at"] for r in rows}) == 1
        assert all(len(r["attempts"]) == 1 for r in rows)
        executed = await store.pool.fetch(
            "SELECT name, jobs_executed FROM workers ORDER BY name")
        assert [(r["name"], r["jobs_executed"]) for r in executed] == [("w1", 4), ("w2", 4)]
    run(database_url, scenario)


def test_results_of_every_json_shape_reach_their_own_jobs(database_url: str) -> None:
    """Lists among the results, and agents' tag lists of several tags, in one batch: each
    job gets exactly its own (a list must not be read as more elements of the batch)."""
    async def scenario(store: Store) -> None:
        results: list[Any] = [[1.0, 2.0], [], [[1], {"a": [2]}], "x", None, {"k": [1, 2]}, 3]
        await store.insert_jobs("default", [job() for _ in results])
        held = await store.claim_jobs("w", ["t"], len(results), 60)
        answers = await settle([
            store.complete_job("w", j.id, j.attempt, "succeeded", result, None, 5,
                               tags=["other", "t", "more"] if n % 2 else None)
            for n, (j, result) in enumerate(zip(held, results, strict=True))])
        assert all(a["status"] == "succeeded" for a in answers), answers
        stored = {r["id"]: r["result"] for r in await store.pool.fetch(
            "SELECT id, result FROM jobs")}
        assert [stored[j.id] for j in held] == results
    run(database_url, scenario)


def test_a_bad_outcome_in_a_batch_fails_alone(database_url: str) -> None:
    async def scenario(store: Store) -> None:
        ids = await store.insert_jobs("default", [job(max_attempts=2) for _ in range(5)])
        a, b, c, d, e = await store.claim_jobs("w", ["t"], 5, 60)
        answers = await settle([
            store.complete_job("w", a.id, a.attempt, "succeeded", 1, None, 5),
            store.complete_job("w", b.id, b.attempt + 1, "succeeded", 1, None, 5),  # stale
            store.complete_job("w", c.id, c.attempt, "succeeded", float("nan"), None, 5),
            store.complete_job("w", d.id, d.attempt, "failed", None,
                               {"kind": "script_error", "message": "exit 1"}, 60),
            store.complete_job("x", e.id, e.attempt, "succeeded", 1, None, 5),  # not its
        ])
        assert answers[0]["status"] == "succeeded"
        assert isinstance(answers[1], LeaseLost)
        assert isinstance(answers[2], InvalidInput)
        assert answers[3]["status"] == "queued"  # a retry, after its backoff
        assert isinstance(answers[4], LeaseLost)
        states = {r["id"]: r["status"] for r in await store.pool.fetch(
            "SELECT id, status FROM jobs ORDER BY id")}
        assert states == {ids[0]: "succeeded", ids[1]: "running", ids[2]: "running",
                          ids[3]: "queued", ids[4]: "running"}
        # The stale and refused ones are still the holder's to finish.
        fixed = await store.complete_job("w", c.id, c.attempt, "succeeded", 2, None, 5)
        assert fixed["status"] == "succeeded"
    run(database_url, scenario)


def test_the_same_outcome_twice_in_one_batch_is_recorded_once(database_url: str) -> None:
    async def scenario(store: Store) -> None:
        [job_id] = await store.insert_jobs("default", [job()])
        [held] = await store.claim_jobs("w", ["t"], 1, 60)
        first, second = await settle([
            store.complete_job("w", job_id, held.attempt, "succeeded", 7, None, 5)
            for _ in range(2)])
        assert (first["repeat"], second["repeat"]) == (False, True)
        attempts = await store.pool.fetchval("SELECT attempts FROM jobs WHERE id = $1", job_id)
        assert len(attempts) == 1
    run(database_url, scenario)


def test_a_holders_run_of_failures_follows_the_batchs_order(database_url: str) -> None:
    """Quarantine counts failures in a row across scripts: in one batch, a success ends the
    run before it, failures after it start a new one, a cancellation changes nothing."""
    async def scenario(store: Store) -> None:
        await store.register_worker("w", "worker", "", ["t"], None, "test")
        await store.insert_jobs("default", [job(f"script {n}", max_attempts=1)
                                            for n in range(6)])
        held = await store.claim_jobs("w", ["t"], 6, 60)

        def failed(n: int) -> Any:
            return store.complete_job("w", held[n].id, held[n].attempt, "failed", None,
                                      {"kind": "script_error", "message": "no"}, 5)

        def ok(n: int) -> Any:
            return store.complete_job("w", held[n].id, held[n].attempt, "succeeded", 1,
                                      None, 5)

        answers = await settle([failed(0), ok(1), failed(2), failed(3), failed(2)])
        assert [a["repeat"] for a in answers] == [False, False, False, False, True]
        streak = await store.pool.fetchrow(
            "SELECT fail_streak, fail_scripts, fail_since FROM workers WHERE name = 'w'")
        assert streak["fail_streak"] == 2  # jobs 2 and 3, after the success
        assert len(streak["fail_scripts"]) == 2 and streak["fail_since"] is not None
        recorded = answers[3]
        assert (recorded["fail_streak"], recorded["fail_scripts"]) == (2, 2)

        cancelled = await store.complete_job("w", held[4].id, held[4].attempt, "cancelled",
                                             None, {"kind": "cancelled", "message": "x"}, 5)
        assert cancelled["fail_streak"] == 2
        [last] = await settle([ok(5)])
        assert last["fail_streak"] == 0
        after = await store.pool.fetchrow(
            "SELECT fail_streak, fail_scripts, fail_since FROM workers WHERE name = 'w'")
        assert (after["fail_streak"], after["fail_scripts"], after["fail_since"]) == \
            (0, [], None)
    run(database_url, scenario)


@pytest.mark.parametrize("holders", [1, 3])
def test_many_completions_at_once_all_land(database_url: str, holders: int) -> None:
    """More outcomes than one statement takes (completions.MAX_BATCH) from several holders
    at once: every job is recorded exactly once."""
    async def scenario(store: Store) -> None:
        ids = await store.insert_jobs("default", [job() for _ in range(450)])
        held = []
        for n in range(holders):
            held += await store.claim_jobs(f"w{n}", ["t"], 450 // holders, 60)
        answers = await settle([store.complete_job(j.worker, j.id, j.attempt, "succeeded",
                                                   j.id, None, 5) for j in held])
        assert all(a["status"] == "succeeded" and not a["repeat"] for a in answers)
        rows = await store.pool.fetch("SELECT id, result, attempts FROM jobs ORDER BY id")
        assert [(r["id"], r["result"], len(r["attempts"])) for r in rows] == \
            [(i, i, 1) for i in ids]
    run(database_url, scenario)


def test_a_caller_that_goes_away_still_has_its_outcome_written(database_url: str) -> None:
    """A request cancelled while its outcome waits in a batch (its client hung up): the
    outcome is recorded all the same, and the others in the batch get their answers."""
    async def scenario(store: Store) -> None:
        ids = await store.insert_jobs("default", [job() for _ in range(3)])
        held = await store.claim_jobs("w", ["t"], 3, 60)
        calls = [asyncio.create_task(store.complete_job("w", j.id, j.attempt, "succeeded",
                                                        {"n": j.id}, None, 5)) for j in held]
        await asyncio.sleep(0)  # each has queued its outcome; none is written yet
        calls[1].cancel()
        answers = await asyncio.gather(*calls, return_exceptions=True)
        assert isinstance(answers[1], asyncio.CancelledError)
        assert [answers[0]["status"], answers[2]["status"]] == ["succeeded", "succeeded"]
        rows = await store.pool.fetch("SELECT id, status, result FROM jobs ORDER BY id")
        assert [(r["id"], r["status"], r["result"]) for r in rows] == [
            (job_id, "succeeded", {"n": job_id}) for job_id in ids]
        # The batch path (an agent's outcomes) likewise.
        more = await store.insert_jobs("default", [job() for _ in range(2)])
        held = await store.claim_jobs("w", ["t"], 2, 60)
        batch = asyncio.create_task(store.complete_jobs([
            store.completion("w", j.id, j.attempt, "succeeded", 1, None, 5) for j in held]))
        await asyncio.sleep(0)
        batch.cancel()
        await asyncio.gather(batch, return_exceptions=True)  # the write goes on without it

        async def written() -> bool:
            return await store.pool.fetchval(
                "SELECT count(*) FROM jobs WHERE id = ANY($1) AND status = 'succeeded'",
                more) == 2
        for _ in range(200):  # up to 20 s
            if await written():
                break
            await asyncio.sleep(0.1)
        assert await written()
    run(database_url, scenario)
