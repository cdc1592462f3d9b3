"""Fixtures: both SQL backends, migrated by Alembic, and a real stack per backend."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from app.db import make_engine, make_sessionmaker
from tests.harness import (
    RedisServer,
    Stack,
    create_postgres_database,
    drop_postgres_database,
    migrate,
)

BACKENDS = ["sqlite", "postgres"]


def work_unit(nodeid: str) -> str:
    """The unit of work an xdist worker takes whole: a test module on one backend.

    Each xdist worker keeps a stack per backend for its session, and module-scoped
    fixtures built on one (a trained job, a CLI, a browser) are built once per module
    and backend only if that module's tests on that backend run on one worker, in a row.
    Unit tests stay one unit each: they are cheap and fill the idle ends of the run.
    """
    module, _, name = nodeid.partition("::")
    if not module.startswith("tests/integration/"):
        return nodeid
    params = name[name.find("[") + 1:-1].split("-") if name.endswith("]") else []
    backend = next((p for p in params if p in BACKENDS), "")
    return f"{module}::{backend}"


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`--dist loadscope` (scripts/test.sh) with work_unit's units, the costliest first.

    (xdist's own groups, the `xdist_group` mark, reach its scheduler through
    `item._nodeid`, which pytest 9 no longer reads; the scheduler sees node ids only,
    so the grouping is a function of the id.)
    """
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ModuleBackendScheduling(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

        def _assign_work_unit(self, node: Any) -> None:
            # Longest first, so no long module starts last: integration modules (which
            # start processes and train) before unit tests, more tests before fewer.
            heaviest = max(self.workqueue, key=lambda scope: (
                scope.startswith("tests/integration/"), len(self.workqueue[scope])))
            self.workqueue.move_to_end(heaviest, last=False)
            super()._assign_work_unit(node)

    return ModuleBackendScheduling(config, log)


def _database(backend: str, tmp: Path) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp / 'trainery.db'}"
    return create_postgres_database()


def _migrated(backend: str, tmp: Path) -> Iterator[str]:
    url = _database(backend, tmp)
    migrate(url)
    yield url
    if backend == "postgres":
        drop_postgres_database(url)


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh database migrated to head, on each backend."""
    yield from _migrated(request.param, tmp_path)


@pytest.fixture(scope="module", params=BACKENDS)
def module_database_url(request: pytest.FixtureRequest,
                        tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One database migrated to head per backend, shared by a module's tests."""
    yield from _migrated(request.param, tmp_path_factory.mktemp("db"))


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    eng = make_engine(database_url)
    yield eng
    eng.dispose()


@pytest.fixture
def factory(engine: Engine) -> sessionmaker[Session]:
    return make_sessionmaker(engine)


@pytest.fixture(scope="session")
def stacks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Stack]]:
    """A running API and one worker per backend, each started when a test first asks,
    kept for the whole session of this (xdist) process."""
    started: dict[str, Stack] = {}
    yield started
    for backend, s in started.items():
        try:
            s.stop()
        finally:
            if backend == "postgres":
                drop_postgres_database(s.database_url)


@pytest.fixture(scope="session", params=BACKENDS)
def stack(request: pytest.FixtureRequest, stacks: dict[str, Stack],
          tmp_path_factory: pytest.TempPathFactory) -> Stack:
    """A running API and one worker, shared by a session's integration tests per backend.

    pytest tears a parametrized fixture down whenever the next test wants the other
    parameter; the stacks themselves live in `stacks`, so a worker that alternates
    between backends does not restart them.
    """
    backend: str = request.param
    if backend not in stacks:
        tmp = tmp_path_factory.mktemp(f"stack-{backend}")
        url = _database(backend, tmp)
        migrate(url)
        s = Stack(url, tmp)
        s.backend = backend  # type: ignore[attr-defined]
        stacks[backend] = s
        s.start_api()
        # The shared worker runs most of the suite's PyTorch jobs: each one's runner is a
        # fork of its template (milliseconds), not a new interpreter importing torch
        # (seconds of CPU). Keras jobs start cold.
        s.start_worker("w1", env={"TRAINERY_WARM_RUNNERS": "pytorch"})
    return stacks[backend]


# Settings that make fault handling fast enough to test: a worker is lost after
# 3 s without heartbeat, lost wake-ups are re-sent after 2 s.
FAST_RECOVERY = {
    "TRAINERY_WORKER_LOST_AFTER_S": "3",
    "TRAINERY_MAINTENANCE_INTERVAL_S": "0.5",
    "TRAINERY_RECONCILE_AFTER_S": "2",
    "TRAINERY_STOP_GRACE_S": "10",
}


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A private Redis this test may kill, restart and flush."""
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def fresh_stack(database_url: str, tmp_path: Path,
                redis_server: RedisServer) -> Iterator[Stack]:
    """An API (no worker yet) on a fresh database and a private Redis, for tests that
    break things."""
    s = Stack(database_url, tmp_path, broker_url=redis_server.url, extra_env=FAST_RECOVERY)
    s.redis = redis_server  # type: ignore[attr-defined]
    try:
        s.start_api()
        yield s
    finally:
        s.stop()
