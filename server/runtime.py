"""Starting and stopping a tagrun process in any mode, with a clean shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import secrets
import signal
import socket
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

import asyncpg
import uvicorn

from tagrun.server import collector
from tagrun.server.agent_tokens import AgentTokens
from tagrun.server.app import Parts, create_app
from tagrun.server.config import SUPERADMIN_TOKEN_FILE, ConfigError, ServerConfig
from tagrun.server.dispatcher import Dispatcher
from tagrun.server.embedded import EmbeddedPostgres
from tagrun.server.fleet_controls import FleetControls
from tagrun.server.heartbeats import Heartbeats
from tagrun.server.listener import Listener
from tagrun.server.maintenance import MaintenanceWorker, job_retention_days, run_maintenance
from tagrun.server.scheduler import Scheduler
from tagrun.server.services.secrets import SecretBox
from tagrun.server.store import DATABASE_STARTING, Store, create_pool, migrate
from tagrun.server.vault import SecretUnreadable, load_keyring
from tagrun.server.worker import Worker, WorkerSettings
from tagrun.shared import tracing
from tagrun.shared.version import __version__

log = logging.getLogger("tagrun.runtime")

STOP_WAIT_S = 5.0  # how long a stopping part may take before it is logged and cut short


class _Server(uvicorn.Server):
    """Uvicorn without its own signal handling: `serve` below owns SIGINT and SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def superadmin_token_path(data_dir: Path) -> Path:
    return data_dir / SUPERADMIN_TOKEN_FILE


async def ensure_superadmin(store: Store, config: ServerConfig) -> None:
    if config.superadmin_token:
        await store.set_superadmin_token(config.superadmin_token)
        log.info("auth.superadmin_from_env")
        return
    token = await store.create_superadmin_token_if_none()
    path = superadmin_token_path(config.data_dir)
    if token is None:
        log.info("auth.superadmin_exists", extra={"token_file": str(path)})
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    os.chmod(path, 0o600)
    log.info("auth.superadmin_created", extra={"token_file": str(path)})


def worker_settings(config: ServerConfig, kind: str) -> WorkerSettings:
    name = config.worker_name or f"{socket.gethostname()}-{kind}-{secrets.token_hex(3)}"
    return WorkerSettings(
        name=name, tags=config.worker_tags, slots=config.worker_slots, lease_s=config.lease_s,
        heartbeat_s=config.heartbeat_s, poll_interval_s=config.poll_interval_s, kind=kind,
        retry_backoff_s=config.retry_backoff_s, max_log_chars=config.max_log_bytes,
        verifier=config.worker_verifier,
    )


def _install_signals(
    stop: asyncio.Event, server: _Server | None, on_forced_exit: Callable[[], None]
) -> None:
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if stop.is_set():  # second signal: wait for nothing but the embedded database
            log.warning("server.forced_exit")
            on_forced_exit()
            os._exit(130)
        log.info("server.stopping", extra={"signal": "second" if stop.is_set() else "first"})
        stop.set()
        if server is not None:
            server.should_exit = True

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # Windows: KeyboardInterrupt instead
            loop.add_signal_handler(sig, on_signal)


def _nothing() -> None:
    pass


async def serve(
    config: ServerConfig, dsn: str, on_forced_exit: Callable[[], None] = _nothing
) -> None:
    pool = await _connect(dsn, config)
    try:
        async with pool.acquire() as conn:
            await migrate(conn)
        store = Store(pool)
        box = SecretBox(store, load_keyring(os.environ, config.data_dir,
                                            embedded=config.database_url is None))
        await box.check_keys()  # SecretUnreadable: this process could not open them
        listener = Listener(dsn)
        listener.on_capped(store.forget_caps)

        def room_freed() -> None:  # a finish frees room under a cap: workers look again
            if store.caps_may_apply():
                listener.wake_tag_waiters()
        listener.on_finished(room_freed)
        await listener.start()
        try:
            await _run_parts(config, store, listener, box, on_forced_exit)
        finally:
            await listener.close()
    finally:
        await _close_pool(pool)


DB_RETRY_S = 1.0


async def _connect(dsn: str, config: ServerConfig) -> asyncpg.Pool[Any]:
    """The pool, once the database answers: a replica started while PostgreSQL restarts or
    recovers waits up to TAGRUN_DB_WAIT_S for it rather than exiting."""
    deadline = asyncio.get_running_loop().time() + config.db_wait_s
    while True:
        try:
            return await create_pool(dsn, size=config.pool_size)
        except DATABASE_STARTING as exc:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise
            log.warning("server.database_waiting", extra={
                "error": f"{type(exc).__name__}: {exc}", "left_s": round(left, 1)})
            await asyncio.sleep(min(DB_RETRY_S, left))


async def _run_parts(
    config: ServerConfig, store: Store, listener: Listener, box: SecretBox,
    on_forced_exit: Callable[[], None],
) -> None:
    stop = asyncio.Event()
    server: _Server | None = None
    tasks: list[asyncio.Task[None]] = []  # each stops within STOP_WAIT_S of `stop`
    draining: list[asyncio.Task[None]] = []  # a worker's drain: bounded by its own timeout
    # Pauses, drains, paused tags and the version window: read by claims here and in the
    # worker below, re-read whenever any replica changes them.
    controls = FleetControls(store)
    await controls.load()
    listener.on_fleet(controls.changed)
    controls.on_change(listener.wake_tag_waiters)  # a tag resumed: workers claim it at once
    listener.on_queued(controls.queued)  # broadcast jobs pinned to an agent
    closers = [controls.close]
    if config.runs_http:
        await ensure_superadmin(store, config)
        parts = await _start_http_parts(config, store, listener, box, controls)
        closers += [parts.heartbeats.close, parts.agent_tokens.close]

        async def end_long_polls() -> None:  # so uvicorn's graceful shutdown need not wait
            await stop.wait()
            await parts.dispatcher.close()
        tasks.append(asyncio.create_task(end_long_polls(), name="end-long-polls"))
        server = _Server(uvicorn.Config(
            create_app(parts),
            host=config.host, port=config.port, log_config=None, access_log=False,
            lifespan="off", timeout_graceful_shutdown=5,
            ssl_certfile=config.tls_cert, ssl_keyfile=config.tls_key,
        ))
        tasks.append(asyncio.create_task(run_maintenance(
            store, stop, stale_after_s=config.stale_after_s,
            fold_after_s=max(config.stale_after_s, 3 * config.lease_s)), name="maintenance"))
        scheduler = Scheduler(store, config.lease_bounds)
        await scheduler.seed_builtins()  # listed from the first request on
        tasks.append(asyncio.create_task(scheduler.run(stop), name="scheduler"))
        maintenance = MaintenanceWorker(store, listener, lease_s=config.lease_s,
                                        retention_days=job_retention_days())
        tasks.append(asyncio.create_task(maintenance.run(stop), name="maintenance-worker"))
    kill_jobs: Callable[[], None] = _nothing
    if config.runs_worker:
        kind = "inline" if config.mode == "standalone" else "worker"
        worker = Worker(store, listener, worker_settings(config, kind), box, controls)
        draining.append(asyncio.create_task(worker.run(stop), name="worker"))
        kill_jobs = worker.kill_all

    def forced_exit() -> None:
        kill_jobs()  # no job process may outlive a forced exit
        on_forced_exit()
    # What is built by now (modules, the app, the pools) lives as long as the process: keep
    # it out of the cyclic collector's full passes, which otherwise walk it every time (one
    # took ~100-130 ms with 1,000 agents connected: a stall of every request and dispatch).
    gc.collect()
    gc.freeze()
    collector.take_full_passes()  # and the full passes over what comes later: server/collector.py
    tasks.append(asyncio.create_task(collector.full_passes(stop), name="gc-full-passes"))
    tasks.append(asyncio.create_task(collector.young_passes(stop), name="gc-young-passes"))
    log.info("server.started", extra={
        "mode": config.mode, "version": __version__,
        "url": config.url if server is not None else None,
        "superadmin_token": config.superadmin_token_source if server is not None else None})
    _install_signals(stop, server, forced_exit)
    if server is not None:
        await server.serve()
        stop.set()
    else:
        await stop.wait()
    await _finish(tasks, draining)
    for close in closers:
        await close()


async def _finish(tasks: list[asyncio.Task[None]], draining: list[asyncio.Task[None]]) -> None:
    """Wait for the parts to stop. One of `tasks` not done within STOP_WAIT_S is logged and
    cancelled, so that a stop always ends (and stops the embedded database with it);
    `draining` (a worker finishing its jobs) is waited for: its drain has its own timeout."""
    if tasks:
        _, pending = await asyncio.wait(tasks, timeout=STOP_WAIT_S)
        for task in pending:
            log.warning("server.stop_slow", extra={"part": task.get_name(),
                                                   "waited_s": STOP_WAIT_S})
            task.cancel()
    await asyncio.gather(*tasks, *draining, return_exceptions=True)


async def _close_pool(pool: asyncpg.Pool[Any]) -> None:
    try:
        await asyncio.wait_for(pool.close(), STOP_WAIT_S)
    except TimeoutError:  # a connection was never given back: close them all anyway
        log.warning("server.stop_slow", extra={"part": "database pool",
                                               "waited_s": STOP_WAIT_S})
        pool.terminate()


async def _start_http_parts(config: ServerConfig, store: Store, listener: Listener,
                            box: SecretBox, controls: FleetControls) -> Parts:
    agent_tokens = AgentTokens(store)
    await agent_tokens.start()
    dispatcher = Dispatcher(store, listener, lease_s=config.lease_s,
                            poll_s=config.poll_interval_s, settled=controls.settled)
    await dispatcher.start()
    agent_tokens.on_revoked(dispatcher.revoke)

    def room_freed() -> None:
        if store.caps_may_apply():
            dispatcher.room_freed()
    listener.on_finished(room_freed)
    heartbeats = Heartbeats(store, lease_s=config.lease_s, stale_after_s=config.stale_after_s)
    await heartbeats.start(dispatcher.waiting_names)
    # Waiting claims of agents now paused or drained answer at once; when the paused tags or
    # the minimum agent version change, every waiting claim does, and asks again.
    controls.on_change(lambda: dispatcher.end_waits(
        lambda name, group: controls.claims_changed or name in controls.pins_added
        or controls.paused_for(name, group) is not None or controls.draining(name)))
    return Parts(config, store, listener, agent_tokens, dispatcher, heartbeats, controls, box)


def run(config: ServerConfig) -> None:
    try:
        job_retention_days()  # read again where used; a bad value stops the start here
    except ConfigError as exc:
        raise SystemExit(f"error: {exc}") from None
    if config.tracing:
        tracing.setup("tagrun-server")
    embedded: EmbeddedPostgres | None = None
    dsn = config.database_url
    if dsn is None:
        embedded = EmbeddedPostgres(config.data_dir)
        dsn = embedded.start()
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(serve(config, dsn, embedded.stop if embedded is not None else _nothing))
    except KeyboardInterrupt:
        pass
    except (ConfigError, SecretUnreadable) as exc:  # the secrets key: wrong, missing, bad
        log.error("server.start_refused", extra={"error": str(exc)})
        raise SystemExit(f"error: {exc}") from None
    finally:
        tracing.shutdown()  # the spans still waiting are sent
        if embedded is not None:
            embedded.stop()


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop where it is installed (not on Windows): the server's HTTP and database work
    run on a faster event loop; the standard one otherwise."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop
