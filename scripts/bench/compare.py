"""tagrun side by side with pgqueuer and procrastinate, on one PostgreSQL, in one run.

    .venv/bin/python scripts/bench/compare.py [--jobs 20000] [--workers 2] [--rounds 2]
        [--latency-jobs 200] [--slots 8] [--systems pgqueuer,procrastinate,direct,agents]

The peers run in an environment of their own, build/bench-venv (made on first use from
scripts/bench/peers/requirements.txt: pgqueuer 1.6.0, procrastinate 3.10.0), through the
team's harness copied into scripts/bench/peers/; tagrun through scripts/bench/_drain.py,
which reuses throughput.py's submit and latency.py's simulated agent. All of them on one
PostgreSQL: TAGRUN_BENCH_DATABASE_URL (a database on a server where we may CREATE DATABASE),
or one embedded PostgreSQL started for the whole run. Each system gets a fresh database of
its own, the same --jobs and --workers, and the machine to itself while it runs. The order
alternates over --rounds (pgqueuer, procrastinate, direct, agents; then the reverse), so a
drift of the machine hits all alike. Prints ONE JSON object on stdout; progress on stderr.

Per system and round (`runs`), then the median over rounds (`systems`):
- `drain_jobs_per_s`: --jobs no-op jobs queued first, then drained by --workers worker
  processes: jobs / (last completion - start), database clock. pgqueuer (batch 10, one
  connection per process) and procrastinate (concurrency 10): start = "GO" to workers
  already connected. tagrun `direct` (`tagrun start --mode worker`, --slots each) and
  `agents` (real `tagrun-agent` processes over HTTP, --slots each): `identity` jobs queued
  on a paused tag, the processes started and idle, the tag resumed; start = the first
  job's started_at (see _drain.py for why not the resume).
- `dispatch`: one job at a time to one idle worker, --latency-jobs after warm-up, p50/p99
  in ms. Peers: enqueue call start -> handler start (CLOCK_MONOTONIC across processes).
  tagrun: submit start -> claim answer carrying the job in an idle long-polling agent's
  hands, as latency.py measures it (`agents` only; `server_p50_ms` is started_at -
  created_at). `submit_p50_ms`: the enqueue call's or the submit request's own round trip.
  tagrun's jobs are submitted alternately through a minimal HTTP/1.1 client (the headline
  figures: the server's dispatch) and through httpx (`httpx_*`, and the `*_httpx` ratios:
  what a submitter using httpx sees, its own work per request included).
  Peers' percentiles interpolate, tagrun's are nearest rank (at 200 samples, a hair apart).
- Every run is checked: each job succeeded exactly once (peers: handler calls, duplicates
  and the libraries' own status APIs; tagrun: all `succeeded`, max(attempt) = 1); `ok`.

`ratios`: tagrun to each peer, from the medians (drain: tagrun / peer, higher is better;
dispatch: tagrun / peer, lower is better). `targets` (issue 19), each with `measured`, its
bound, `met` and the value of each round: direct drain >= 1.0x pgqueuer's; agents' drain
>= 0.8x pgqueuer's; dispatch p50 <= 1.0x pgqueuer's p50 and p99 <= 3x pgqueuer's p50;
submit round trip p50 <= 2 ms; agents' drain >= 0.9x direct workers'. Absolute figures move
with the machine's load (`machine.loadavg_*`); the ratios within one run are the result.
Exit status 1 when a run failed (its errors are in the JSON), whatever the targets say.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import asyncpg  # noqa: E402
from _drain import measure  # noqa: E402
from _proc import log, sigterm_as_exit  # noqa: E402

from tagrun.shared.version import __version__  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
PEERS_DIR = HERE / "peers"
PINS = {"pgqueuer": "1.6.0", "procrastinate": "3.10.0"}
SYSTEMS = ("pgqueuer", "procrastinate", "direct", "agents")
VERSIONS = ("import importlib.metadata as m, json; print(json.dumps({p: m.version(p) for p in "
            "('pgqueuer', 'procrastinate', 'asyncpg', 'psycopg')}))")
SERVER_SETTINGS = ("server_version", "fsync", "synchronous_commit", "shared_buffers")


def peer_python(venv: Path) -> tuple[Path, dict[str, str]]:
    """The bench environment's interpreter (made or repaired first) and its packages' versions."""
    python = venv / "bin" / "python"
    versions = _versions(python)
    if versions is None or any(versions.get(k) != v for k, v in PINS.items()):
        log(f"making {venv} (pgqueuer {PINS['pgqueuer']}, procrastinate {PINS['procrastinate']})")
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        "-r", str(PEERS_DIR / "requirements.txt")], check=True,
                       stdout=sys.stderr)
        versions = _versions(python)
        if versions is None or any(versions.get(k) != v for k, v in PINS.items()):
            raise SystemExit(f"{venv}: expected {PINS}, found {versions}")
    return python, versions


def _versions(python: Path) -> dict[str, str] | None:
    if not python.exists():
        return None
    r = subprocess.run([str(python), "-c", VERSIONS], capture_output=True, text=True)
    return json.loads(r.stdout) if r.returncode == 0 else None


async def run_peer(name: str, python: Path, admin: str, ns: argparse.Namespace,
                   round_no: int) -> dict[str, Any]:
    """One `<name>_bench.py run` (latency, then drain, on a fresh database it drops)."""
    extra = (["--batch-size", str(ns.pgq_batch_size)] if name == "pgqueuer"
             else ["--concurrency", str(ns.proc_concurrency)])
    dbname = f"compare_{name}_{os.getpid()}"
    argv = [str(python), str(PEERS_DIR / f"{name}_bench.py"), "run", "--admin-url", admin,
            "--db-name", dbname, "--jobs", str(ns.jobs),
            "--workers", str(ns.workers), "--enqueue-batch", str(ns.batch),
            "--latency-jobs", str(ns.latency_jobs), "--latency-warmup", str(ns.latency_warmup),
            "--drain-timeout", str(ns.timeout_s), "--run-label", "compare", *extra]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PEERS_")}
    env["PEERS_ROUND"] = str(round_no)
    # Its own process group: a timeout or Ctrl+C stops it and the workers it started.
    proc = await asyncio.create_subprocess_exec(*argv, env=env, stdout=subprocess.PIPE,
                                                start_new_session=True)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), ns.timeout_s * 2 + 120)
    except TimeoutError:
        return {"ok": False, "errors": [f"{name} bench timed out"]}
    finally:
        if proc.returncode is None:  # timed out or interrupted: it could not drop its database
            await _stop_group(proc)
            await drop_database(admin, dbname)
    lines = [line for line in out.decode().splitlines() if line.startswith("{")]
    records = {r["measurement"]: r for r in map(json.loads, lines) if r.get("measurement")}
    return peer_result(records, proc.returncode)


async def _stop_group(proc: asyncio.subprocess.Process) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), 15)
    except TimeoutError:
        os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()


async def drop_database(admin: str, name: str) -> None:
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def peer_result(records: dict[str, dict[str, Any]], code: int | None) -> dict[str, Any]:
    drain, lat = records.get("drain_throughput", {}), records.get("dispatch_latency", {})
    bulk = records.get("bulk_enqueue", {})
    errors = [f"drain: {e}" for e in drain.get("errors", [])]
    errors += [f"dispatch: {e}" for e in lat.get("errors", [])]
    if not (drain.get("ok") and lat.get("ok")):
        errors.append(f"bench exited {code}; drain ok={drain.get('ok')}, "
                      f"dispatch ok={lat.get('ok')}")
    return {
        "ok": not errors, "errors": errors, "jobs": drain.get("jobs"),
        "drain_jobs_per_s": drain.get("value"), "elapsed_s": drain.get("elapsed_s"),
        "enqueue_jobs_per_s": bulk.get("value"),
        "handler_calls": drain.get("handler_calls"),
        "duplicate_handler_calls": drain.get("duplicate_handler_calls"),
        "cpu_ms_per_job": {"workers": drain.get("workers_cpu_ms_per_job")},
        "dispatch": {"n": lat.get("jobs_measured"), "p50_ms": lat.get("p50_ms"),
                     "p99_ms": lat.get("p99_ms"),
                     "submit_p50_ms": (lat.get("enqueue_call_ms") or {}).get("p50")},
        "version": drain.get("library_version") or lat.get("library_version"),
    }


async def run_tagrun(variant: str, ns: argparse.Namespace, round_no: int) -> dict[str, Any]:
    try:
        out = await measure(variant, f"{variant}-{round_no}", jobs=ns.jobs, workers=ns.workers,
                            slots=ns.slots, batch=ns.batch, latency_jobs=ns.latency_jobs,
                            latency_warmup=ns.latency_warmup, settle_ms=ns.settle_ms,
                            timeout_s=ns.timeout_s)
    except Exception as exc:  # noqa: BLE001 - a failed run is reported, the others go on
        log(f"tagrun {variant}: {exc!r}")
        return {"ok": False, "errors": [f"{type(exc).__name__}: {exc}"]}
    sim = out.pop("dispatch", None)
    if sim is not None:
        out["dispatch"] = {"n": sim["client_ms"]["n"], "p50_ms": sim["client_ms"]["p50"],
                           "p99_ms": sim["client_ms"]["p99"],
                           "submit_p50_ms": sim["submit_ms"]["p50"],
                           "httpx_p50_ms": sim["client_ms_httpx"]["p50"],
                           "httpx_p99_ms": sim["client_ms_httpx"]["p99"],
                           "httpx_submit_p50_ms": sim["submit_ms_httpx"]["p50"],
                           "server_p50_ms": sim["server_ms"]["p50"]}
    return out


# Each figure of a system, and where a run keeps it.
METRICS = {"drain_jobs_per_s": ("drain_jobs_per_s",), "dispatch_p50_ms": ("dispatch", "p50_ms"),
           "dispatch_p99_ms": ("dispatch", "p99_ms"),
           "submit_p50_ms": ("dispatch", "submit_p50_ms"),
           # tagrun's submits through httpx, beside those through the minimal client
           "dispatch_p50_httpx_ms": ("dispatch", "httpx_p50_ms"),
           "dispatch_p99_httpx_ms": ("dispatch", "httpx_p99_ms"),
           "submit_p50_httpx_ms": ("dispatch", "httpx_submit_p50_ms")}
DRAIN, P50, P99, SUBMIT, P50_HTTPX, P99_HTTPX, SUBMIT_HTTPX = METRICS
# Issue 19's targets: (name, tagrun's figure, the one it is divided by, bound, limit).
TARGETS: tuple[tuple[str, tuple[str, str], tuple[str, str] | None, str, float], ...] = (
    ("direct_drain_vs_pgqueuer", ("direct", DRAIN), ("pgqueuer", DRAIN), "at_least", 1.0),
    ("agents_drain_vs_pgqueuer", ("agents", DRAIN), ("pgqueuer", DRAIN), "at_least", 0.8),
    ("dispatch_p50_vs_pgqueuer_p50", ("agents", P50), ("pgqueuer", P50), "at_most", 1.0),
    ("dispatch_p99_vs_pgqueuer_p50", ("agents", P99), ("pgqueuer", P50), "at_most", 3.0),
    ("submit_round_trip_p50_ms", ("agents", SUBMIT), None, "at_most", 2.0),
    ("agents_drain_vs_direct", ("agents", DRAIN), ("direct", DRAIN), "at_least", 0.9),
)


def metric(runs: list[dict[str, Any]], system: str, key: str,
           round_no: int | None = None) -> float | None:
    """The median of one figure over a system's successful runs (or one round's)."""
    values = []
    for run in runs:
        if run["system"] != system or not run["ok"] or round_no not in (None, run["round"]):
            continue
        value: Any = run
        for part in METRICS[key]:
            value = value.get(part) if isinstance(value, dict) else None
        if value is not None:
            values.append(float(value))
    return round(statistics.median(values), 3) if values else None


def each_round(runs: list[dict[str, Any]], system: str, key: str) -> list[float | None]:
    rounds = sorted({r["round"] for r in runs})
    return [metric(runs, system, key, n) for n in rounds]


def summarize(runs: list[dict[str, Any]], systems: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in systems:
        found = {key: value for key in METRICS
                 if (value := metric(runs, name, key)) is not None}
        out[name] = {"rounds_ok": sum(1 for r in runs if r["system"] == name and r["ok"]),
                     **found, "each_round": {key: each_round(runs, name, key) for key in found}}
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def ratios(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """tagrun's figures over each peer's: drain (higher is better), dispatch (lower is)."""
    out: dict[str, Any] = {}
    for peer in PINS:
        out[f"to_{peer}"] = {
            f"{variant}_drain": _ratio(metric(runs, variant, DRAIN), metric(runs, peer, DRAIN))
            for variant in ("direct", "agents")}
        for key, theirs in ((P50, P50), (P99, P99), (P50_HTTPX, P50), (P99_HTTPX, P99)):
            out[f"to_{peer}"][key.removesuffix("_ms")] = _ratio(metric(runs, "agents", key),
                                                                metric(runs, peer, theirs))
    out["agents_to_direct_drain"] = _ratio(metric(runs, "agents", DRAIN),
                                           metric(runs, "direct", DRAIN))
    return out


def targets(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each target from the medians, met or not, and its value in each round."""
    def measured(ours: tuple[str, str], theirs: tuple[str, str] | None,
                 round_no: int | None) -> float | None:
        value = metric(runs, *ours, round_no)
        return value if theirs is None else _ratio(value, metric(runs, *theirs, round_no))

    out: dict[str, Any] = {}
    rounds = sorted({r["round"] for r in runs})
    for name, ours, theirs, bound, limit in TARGETS:
        value = measured(ours, theirs, None)
        met = value is not None and (value >= limit if bound == "at_least" else value <= limit)
        out[name] = {"measured": value, bound: limit, "met": met,
                     "each_round": [measured(ours, theirs, n) for n in rounds]}
    return out


def order(systems: list[str], round_no: int) -> list[str]:
    return systems if round_no % 2 else systems[::-1]


async def server_info(admin: str) -> dict[str, Any]:
    conn = await asyncpg.connect(admin)
    try:
        return {name: await conn.fetchval(f"SHOW {name}") for name in SERVER_SETTINGS}
    finally:
        await conn.close()


@contextmanager
def one_postgres() -> Iterator[str]:
    """TAGRUN_BENCH_DATABASE_URL, or an embedded PostgreSQL for the whole run (which _db.py's
    scratch databases then use too): every system on one server."""
    if admin := os.environ.get("TAGRUN_BENCH_DATABASE_URL"):
        yield admin
        return
    from tagrun.server.embedded import EmbeddedPostgres

    tmp = Path(tempfile.mkdtemp(prefix="tagrun-compare-"))
    embedded = EmbeddedPostgres(tmp)
    try:
        os.environ["TAGRUN_BENCH_DATABASE_URL"] = embedded.start()
        yield os.environ["TAGRUN_BENCH_DATABASE_URL"]
    finally:
        del os.environ["TAGRUN_BENCH_DATABASE_URL"]
        embedded.stop()
        shutil.rmtree(tmp, ignore_errors=True)


async def run_all(ns: argparse.Namespace, admin: str, python: Path | None
                  ) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = []
    for round_no in range(1, ns.rounds + 1):
        for position, name in enumerate(order(ns.systems, round_no), 1):
            log(f"=== round {round_no}/{ns.rounds}: {name}")
            if name in PINS:
                assert python is not None
                result = await run_peer(name, python, admin, ns, round_no)
            else:
                result = await run_tagrun(name, ns, round_no)
            runs.append({"system": name, "round": round_no, "position": position, **result})
            log(f"{name}: drain {result.get('drain_jobs_per_s')} jobs/s, dispatch "
                f"{result.get('dispatch')}, ok={result['ok']} {result['errors'] or ''}")
    return runs


async def main(ns: argparse.Namespace) -> tuple[dict[str, Any], bool]:
    started = time.monotonic()
    load_before = [round(x, 2) for x in os.getloadavg()]
    python, versions = (peer_python(ns.venv) if set(ns.systems) & set(PINS)
                        else (None, {}))
    with one_postgres() as admin:
        server = await server_info(admin)
        runs = await run_all(ns, admin, python)
    goals = targets(runs)
    result = {
        "bench": "compare",
        "settings": {"jobs": ns.jobs, "workers": ns.workers, "rounds": ns.rounds,
                     "latency_jobs": ns.latency_jobs, "latency_warmup": ns.latency_warmup,
                     "enqueue_batch": ns.batch, "tagrun_slots": ns.slots,
                     "pgqueuer_batch_size": ns.pgq_batch_size,
                     "procrastinate_concurrency": ns.proc_concurrency,
                     "order": {n: order(ns.systems, n) for n in range(1, ns.rounds + 1)}},
        "versions": {"tagrun": __version__, **versions}, "postgres": server,
        "systems": summarize(runs, ns.systems), "ratios": ratios(runs), "targets": goals,
        "targets_met": f"{sum(t['met'] for t in goals.values())} of {len(goals)}",
        "runs": runs,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "loadavg_before": load_before,
                    "loadavg_after": [round(x, 2) for x in os.getloadavg()]},
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    return result, all(r["ok"] for r in runs)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=20000, help="no-op jobs each system drains")
    p.add_argument("--workers", type=int, default=2, help="worker processes of each system")
    p.add_argument("--rounds", type=int, default=2, help="rounds, the order reversed each time")
    p.add_argument("--latency-jobs", type=int, default=200, help="dispatch samples per run")
    p.add_argument("--latency-warmup", type=int, default=20)
    p.add_argument("--settle-ms", type=float, default=20.0,
                   help="tagrun: pause after the agent's claim was sent (latency.py)")
    p.add_argument("--slots", type=int, default=8, help="tagrun: slots per worker or agent")
    p.add_argument("--batch", type=int, default=1000, help="jobs per enqueue call or request")
    p.add_argument("--pgq-batch-size", type=int, default=10)
    p.add_argument("--proc-concurrency", type=int, default=10)
    p.add_argument("--systems", default=",".join(SYSTEMS),
                   help="which to run, of " + ", ".join(SYSTEMS))
    p.add_argument("--timeout-s", type=float, default=300.0, help="per drain")
    p.add_argument("--venv", type=Path, default=ROOT / "build" / "bench-venv",
                   help="the peers' environment, made if missing")
    ns = p.parse_args()
    ns.systems = [s.strip() for s in ns.systems.split(",") if s.strip()]
    if unknown := set(ns.systems) - set(SYSTEMS):
        p.error(f"unknown systems {sorted(unknown)}; choose from {', '.join(SYSTEMS)}")
    return ns


if __name__ == "__main__":
    sigterm_as_exit()
    report, ok = asyncio.run(main(parse_args()))
    print(json.dumps(report))
    sys.exit(0 if ok else 1)
