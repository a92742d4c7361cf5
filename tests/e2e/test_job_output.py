"""Every byte a job prints, and every string it returns, arrives, through a real agent and a
real direct worker, whatever the bytes (NUL, invalid UTF-8, encoded surrogates, random
binary). What PostgreSQL cannot hold is shown, one character for one: U+0000 as ␀, a lone
surrogate or an undecodable byte as U+FFFD. A result no database can hold fails the job at
once, saying why."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.support.database import DatabaseFactory
from tests.support.processes import AgentProcess, TagrunProcess, api_client, wait_until

# Prints the bytes between markers, and returns them decoded with surrogateescape: every
# undecodable byte becomes a lone surrogate in the result.
JOB = '''
import sys

def main(hex):
    data = bytes.fromhex(hex)
    sys.stdout.buffer.write(b"<<" + data + b">>\\n")
    sys.stdout.flush()
    return {"text": data.decode("utf-8", "surrogateescape")}
'''


def shown(text: str) -> str:
    """What tagrun stores for `text`: NUL as ␀, a lone surrogate as U+FFFD."""
    return "".join("\u2400" if c == "\0" else "\ufffd" if "\ud800" <= c <= "\udfff" else c
                   for c in text)


@dataclass
class Fleet:
    api: httpx.Client
    tags: dict[str, str]  # who runs it ("agent", "worker") -> its tag


@pytest.fixture(scope="module")
def fleet(databases: DatabaseFactory, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[Fleet]:
    """A server, a direct worker and an agent, each runner on a tag of its own."""
    data = tmp_path_factory.mktemp("bytes")
    database_url = databases.new()
    tags = {"agent": f"bytes-a-{uuid.uuid4().hex[:6]}", "worker": f"bytes-w-{uuid.uuid4().hex[:6]}"}
    server = TagrunProcess("server", database_url=database_url, data_dir=data).wait_healthy()
    worker = TagrunProcess("worker", database_url=database_url, data_dir=data,
                           env={"WORKER_TAGS": tags["worker"], "WORKER_SLOTS": "2"})
    agent = None
    try:
        with api_client(server.url) as api:
            token = api.post("/api/agent_tokens",
                             json={"group": "edge", "tags": [tags["agent"]]}).json()["token"]
            agent = AgentProcess(server.url, token, Path(data), name="bytes-agent")
            yield Fleet(api, tags)
    finally:
        if agent is not None:
            agent.kill()
        worker.kill()
        server.kill()


def run(fleet: Fleet, who: str, data: bytes) -> tuple[str, dict[str, str]]:
    job = fleet.api.post("/api/w/default/jobs", json={
        "language": "python", "tag": fleet.tags[who], "content": JOB,
        "args": {"hex": data.hex()}}).json()
    final = fleet.api.get(f"/api/w/default/jobs/{job['id']}", params={"wait_s": 60}).json()
    assert final["status"] == "succeeded", final
    log = fleet.api.get(f"/api/w/default/jobs/{job['id']}/logs").json()["data"]
    return log, final["result"]


@pytest.mark.parametrize("who", ["agent", "worker"])
@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=2000))
@example(data=bytes(range(256)))
@example(data=b"\x00")
@example(data="\ud800 and \udfff".encode("utf-8", "surrogatepass"))  # encoded surrogates
@example(data=b"one\nnul:\x00:end\ntwo\n\x00\x00three")
def test_every_byte_printed_and_returned_arrives(fleet: Fleet, who: str, data: bytes) -> None:
    log, result = run(fleet, who, data)
    assert log == "<<" + shown(data.decode("utf-8", "replace")) + ">>\n"
    assert result == {"text": shown(data.decode("utf-8", "surrogateescape"))}


@pytest.mark.parametrize("who", ["agent", "worker"])
@pytest.mark.parametrize("returns", ['float("nan")', '{"x": float("inf")}'])
def test_a_result_no_database_can_hold_fails_at_once_and_is_not_retried(
    fleet: Fleet, who: str, returns: str
) -> None:
    """Python's json writes NaN and Infinity, which are not JSON: the attempt fails with the
    reason, at once (not at lease expiry), and is not retried (it would return it again)."""
    job = fleet.api.post("/api/w/default/jobs", json={
        "language": "python", "tag": fleet.tags[who],
        "content": f"def main():\n    return {returns}\n"}).json()
    final = fleet.api.get(f"/api/w/default/jobs/{job['id']}", params={"wait_s": 30}).json()
    assert (final["status"], final["attempt"], final["max_attempts"]) == ("failed", 1, 3)
    assert final["error"] == {
        "kind": "internal",
        "message": "the job's result cannot be stored as JSON: Out of range float values are "
                   "not JSON compliant"}


# Writes each piece once the one before it is in the log (the test then opens its gate): lines
# by stream, and a stdout line that stderr interrupts before its end.
PIECES = [("out", "first\n"), ("err", "oops\n"), ("out", "half"), ("err", "interrupts\n"),
          ("out", " rest\n")]
STREAMS_JOB = """
import os, sys, time

def main(gates, pieces):
    for n, (stream, text) in enumerate(pieces):
        (sys.stdout if stream == "out" else sys.stderr).write(text)
        deadline = time.monotonic() + 60
        while not os.path.exists(os.path.join(gates, str(n))) and time.monotonic() < deadline:
            time.sleep(0.01)
"""


@pytest.mark.parametrize("who", ["agent", "worker"])
def test_log_lines_say_when_they_began_and_on_which_stream(
    fleet: Fleet, who: str, tmp_path: Path
) -> None:
    job = fleet.api.post("/api/w/default/jobs", json={
        "language": "python", "tag": fleet.tags[who], "content": STREAMS_JOB,
        "args": {"gates": str(tmp_path), "pieces": PIECES}}).json()
    logs_url = f"/api/w/default/jobs/{job['id']}/logs"
    for n in range(len(PIECES)):
        so_far = "".join(text for _, text in PIECES[:n + 1])
        wait_until(lambda text=so_far: fleet.api.get(logs_url).json()["data"] == text,
                   timeout=30, message=f"piece {n} in the log")
        (tmp_path / str(n)).touch()
    final = fleet.api.get(f"/api/w/default/jobs/{job['id']}", params={"wait_s": 60}).json()
    assert final["status"] == "succeeded", final
    logs = fleet.api.get(logs_url).json()
    assert logs["data"] == "first\noops\nhalfinterrupts\n rest\n"  # the text as ever
    assert [(line["stream"], line["text"]) for line in logs["lines"]] == [
        ("stdout", "first"), ("stderr", "oops"), ("stdout", "half"),
        ("stderr", "interrupts"), ("stdout", " rest")]
    times = [datetime.fromisoformat(line["at"]) for line in logs["lines"]]
    assert times == sorted(times) and times[0] < times[-1]
    started = datetime.fromisoformat(final["started_at"])
    finished = datetime.fromisoformat(final["finished_at"])
    assert started - timedelta(seconds=1) <= times[0] and times[-1] <= finished
    assert all(line["at"].endswith("Z") and len(line["at"]) == 24 for line in logs["lines"])
    assert logs["lines_end"] == logs["offset"] == len(logs["data"]) and logs["done"]


def test_a_log_chunk_the_server_refuses_leaves_a_marker_and_a_note_on_the_job(
    start_process: Any, database_url: str, tmp_path: Path
) -> None:
    """A real agent whose chunk the server refuses (here: larger than the server takes): the
    log keeps a marker where the chunk was and goes on, and the job says how many it lost."""
    server = start_process("server", database_url,
                           env={"TAGRUN_MAX_BODY_BYTES": "65536"}).wait_healthy()
    with api_client(server.url) as api:
        token = api.post("/api/agent_tokens",
                         json={"group": "edge", "tags": ["chunks"]}).json()["token"]
        agent = AgentProcess(server.url, token, tmp_path, name="chunks-agent")
        try:
            # 30,000 euro signs: about 90 kB in UTF-8, 180 kB as JSON escapes: over the limit.
            job = api.post("/api/w/default/jobs", json={
                "language": "python", "tag": "chunks", "content": (
                    "import sys, time\n\ndef main():\n"
                    "    print('before', flush=True)\n    time.sleep(1)\n"
                    "    print('\\u20ac' * 30000, flush=True)\n    time.sleep(1)\n"
                    "    print('after', flush=True)\n    return 'done'\n")}).json()
            final = api.get(f"/api/w/default/jobs/{job['id']}", params={"wait_s": 60}).json()
            log = api.get(f"/api/w/default/jobs/{job['id']}/logs").json()["data"]
        finally:
            agent.kill()
    assert (final["status"], final["result"]) == ("succeeded", "done")
    markers = log.count("[tagrun: log chunk lost: ")
    assert markers >= 1 and "413" in log, log[:300]
    assert log.startswith("before\n") and log.endswith("after\n") and "\u20ac" not in log
    assert final["log_chunks_lost"] == markers
    assert final["attempts"][0]["log_chunks_lost"] == markers
