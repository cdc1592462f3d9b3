"""Engine and session factory; SQLite gets WAL, a busy timeout and immediate write transactions."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.orm import Session, sessionmaker

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SQLITE_BUSY_TIMEOUT_MS = 30_000
WRITE_OPTION = "trainery_write"
AUTOCOMMIT_OPTION = "trainery_autocommit"


def _configure_sqlite(engine: Engine) -> None:
    # pysqlite's own transaction handling is off; we emit BEGIN ourselves.
    # Reads begin DEFERRED (WAL lets them run beside a writer). Units of work
    # from transaction() begin IMMEDIATE: they take the write lock up front, so
    # a read-then-write can never fail half-way with "database is locked".
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        options = conn.get_execution_options()
        if options.get(AUTOCOMMIT_OPTION, False):
            return  # reader(): each statement on its own
        conn.exec_driver_sql("BEGIN IMMEDIATE" if options.get(WRITE_OPTION, False) else "BEGIN")


def json_loads(text: str | bytes) -> Any:
    """JSON columns as read: orjson (a job's spec parses several times faster, and a page
    of jobs is 50 specs), else json for what orjson refuses (NaN, which json.dumps writes).

    orjson reads an integer past 64 bits as a float; none is ever stored: every JSON body
    the API takes refuses one (app/core/strict.py), and runners report floats.
    """
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


def make_engine(url: str, pool_size: int = 5) -> Engine:
    """Build an engine for url with the settings this service relies on.

    Both dialects get pool_size connections plus as many in overflow: the API
    admits at most pool_size request units of work (app/api/admission.py), so
    the overflow is always there for short sessions (readiness, streams).
    """
    if url.startswith("sqlite"):
        # An in-memory database lives in one connection (SingletonThreadPool): no pool sizes.
        in_memory = url in ("sqlite://", "sqlite:///:memory:")
        pool = {} if in_memory else {"pool_size": pool_size, "max_overflow": pool_size}
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30},
                               json_deserializer=json_loads, **pool)
        _configure_sqlite(engine)
        return engine
    return create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True,
                         json_deserializer=json_loads)


def writer(engine: Engine) -> Engine:
    """engine whose transactions take the write lock up front (SQLite BEGIN IMMEDIATE)."""
    return engine.execution_options(**{WRITE_OPTION: True})


def reader(engine: Engine) -> Engine:
    """engine whose sessions read outside a transaction: each statement sees the store as
    it was when that statement ran, and a session costs no BEGIN and no ROLLBACK (round
    trips, on PostgreSQL). For reads that need no snapshot across statements, such as a
    poll of a job (one statement).

    SQLite's own AUTOCOMMIT level is not used: SQLAlchemy resets it on checkin by turning
    pysqlite's transaction handling back on, which _configure_sqlite turned off.
    """
    if engine.dialect.name == "sqlite":
        return engine.execution_options(**{AUTOCOMMIT_OPTION: True})
    return engine.execution_options(isolation_level="AUTOCOMMIT")


def async_reader(url: str, pool_size: int = 2) -> AsyncEngine | None:
    """For PostgreSQL, an engine on psycopg's async driver whose connections read outside a
    transaction, as reader()'s: the API's polls read on it without a thread hop
    (app/api/polls.py). None for SQLite, whose reads need no network wait.

    No ping at checkout (pool_pre_ping): a round of polls is a statement or two, and the
    ping was one more round trip to the server in each. A round that meets a connection
    the server dropped reads again on a fresh one instead (LoopReads.run), as the
    ping would have had it."""
    if url.startswith("sqlite"):
        return None
    return create_async_engine(url, pool_size=pool_size, max_overflow=pool_size,
                               isolation_level="AUTOCOMMIT", json_deserializer=json_loads)


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """A session factory bound to engine; objects stay readable after commit."""
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work that writes: commit on success, roll back on error."""
    with factory() as session, session.begin():
        session.connection(execution_options={WRITE_OPTION: True})
        yield session


def migrate(url: str) -> None:
    """alembic upgrade head against url, as a deployment runs it (from a source checkout)."""
    from alembic import command
    from alembic.config import Config

    cfg = Config(str(PROJECT_ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(PROJECT_ROOT / "migrations"))
    cfg.set_main_option("sqlalchemy.url", url)
    command.upgrade(cfg, "head")
