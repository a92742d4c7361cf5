from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.database import DatabaseFactory, start_embedded, state_sets_disagree
from tests.support.processes import TagrunProcess, api_client


@pytest.fixture(scope="session")
def databases() -> Iterator[DatabaseFactory]:
    admin_dsn = os.environ.get("TAGRUN_TEST_DATABASE_URL")
    embedded = None
    # Not under pytest's tmp_path: pytest prunes old base temp dirs, even a live session's.
    pg_dir = Path(tempfile.mkdtemp(prefix="tagrun-test-pg-"))
    if not admin_dsn:
        admin_dsn, embedded = start_embedded(pg_dir)
    dbs = DatabaseFactory(admin_dsn)
    dbs.create_template()
    yield dbs
    dbs.drop_all()
    if embedded is not None:
        embedded.stop()  # type: ignore[attr-defined]
    shutil.rmtree(pg_dir, ignore_errors=True)


@pytest.fixture
def database_url(databases: DatabaseFactory) -> Iterator[str]:
    """A fresh, migrated database of this test's own. Afterwards, whatever the test did,
    `queue`, `running` and `ended` must hold exactly the jobs of their state."""
    url = databases.new()
    yield url
    problems = state_sets_disagree(url)
    assert not problems, problems


@pytest.fixture(scope="session")
def server(databases: DatabaseFactory, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[TagrunProcess]:
    """One standalone server (HTTP + in-process worker) shared by the API tests."""
    url = databases.new()
    proc = TagrunProcess("standalone", database_url=url,
                         data_dir=tmp_path_factory.mktemp("server"),
                         env={"TAGRUN_MAX_BODY_BYTES": "65536"})
    proc.wait_healthy()
    yield proc
    proc.stop()
    problems = state_sets_disagree(url)
    assert not problems, problems


@pytest.fixture
def api(server: TagrunProcess) -> Iterator[httpx.Client]:
    with api_client(server.url) as client:
        yield client


@pytest.fixture
def start_process(tmp_path: Path) -> Iterator[object]:
    """Start more tagrun processes; every one is stopped (or killed) at the end of the test."""
    started: list[TagrunProcess] = []

    def start(mode: str, database_url: str | None, **kwargs: object) -> TagrunProcess:
        proc = TagrunProcess(mode, database_url=database_url,
                             data_dir=kwargs.pop("data_dir", tmp_path / "data"),  # type: ignore[arg-type]
                             **kwargs)  # type: ignore[arg-type]
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Iterator[None]:
    """When a test fails, show the end of every process log it left in its tmp_path."""
    report = yield
    tmp = getattr(item, "funcargs", {}).get("tmp_path")
    if report.failed and call.when == "call" and isinstance(tmp, Path):
        for log in sorted(tmp.rglob("*.log"))[:8]:
            lines = log.read_text(errors="replace").splitlines()[-40:]
            report.sections.append((f"log {log.name} (last 40 lines)", "\n".join(lines)))
    return report
