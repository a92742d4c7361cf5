"""The chaos soak (scripts/soak.py) for one minute: two replicas, three agents and a direct
worker, 400 jobs of every kind, and kill -9, PostgreSQL restarts and partitions; every job
must end succeeded, recorded once, with its result and its whole log."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
# A fixed seed: the same jobs and the same fault schedule (kinds and moments) every run.
SOAK = [sys.executable, str(ROOT / "scripts" / "soak.py"), "--duration", "60", "--jobs", "400",
        "--agents", "3", "--workers", "1", "--seed", "20261206", "--settle-s", "40"]


def run_soak(timeout: float) -> tuple[dict[str, Any], str]:
    """The soak's JSON summary and its progress; SIGTERM past `timeout` (it then stops
    everything it started and still prints its summary)."""
    proc = subprocess.Popen(SOAK, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        pytest.fail(f"the soak ran past {timeout:g} s:\n{err[-3000:]}\n{out[-3000:]}")
    assert out.strip(), f"no summary (exit {proc.returncode}):\n{err[-3000:]}"
    return json.loads(out), err


@pytest.mark.timeout(300)
def test_a_minute_of_chaos_loses_no_job_no_result_and_no_log() -> None:
    summary, progress = run_soak(timeout=200)
    shown = json.dumps(summary, indent=1)[:6000] + "\n" + progress[-2000:]
    assert summary["ok"] is True, shown
    assert summary["by_status"] == {"succeeded": 400}, shown
    assert summary["jobs"]["submitted"] == 400, shown
    assert not any(summary["problems"].values()), shown
    kinds = set(summary["faults"]["by_kind"])
    assert {"kill_agent", "kill_replica", "restart_postgres"} <= kinds, shown
    assert len(kinds) >= 5, shown
    # The faults hit running jobs, not only idle processes: holders were killed or cut off
    # while they held jobs (what became of those jobs is checked above: none was lost).
    hits = [f for f in summary["faults"]["log"]
            if f["kind"] in ("kill_agent", "kill_worker", "partition_long") and f.get("held")]
    assert hits, shown
