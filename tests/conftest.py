"""Fixtures: both SQL backends, migrated by Alembic, and a real stack per backend."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from app.db import make_engine, make_sessionmaker
from tests.harness import Stack, create_postgres_database, drop_postgres_database, migrate

BACKENDS = ["sqlite", "postgres"]


def _database(backend: str, tmp: Path) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp / 'trainery.db'}"
    return create_postgres_database()


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh database migrated to head, on each backend."""
    url = _database(request.param, tmp_path)
    migrate(url)
    yield url
    if request.param == "postgres":
        drop_postgres_database(url)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    eng = make_engine(database_url)
    yield eng
    eng.dispose()


@pytest.fixture
def factory(engine: Engine) -> sessionmaker[Session]:
    return make_sessionmaker(engine)


@pytest.fixture(scope="session", params=BACKENDS)
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A running API and one worker, shared by a session's integration tests per backend."""
    tmp = tmp_path_factory.mktemp(f"stack-{request.param}")
    url = _database(request.param, tmp)
    migrate(url)
    s = Stack(url, tmp)
    s.backend = request.param  # type: ignore[attr-defined]
    try:
        s.start_api()
        s.start_worker("w1")
        yield s
    finally:
        s.stop()
        if request.param == "postgres":
            drop_postgres_database(url)
