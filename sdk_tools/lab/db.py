"""Engine set-up for the embedded SQLite default and for PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from sdk_tools.lab.groupcommit import GroupCommitter

SQLITE_BUSY_TIMEOUT_S = 30.0
T = TypeVar("T")


@dataclass(frozen=True)
class Database:
    engine: Engine
    sessions: sessionmaker[Session]
    # SQLite admits one writer and pays an fsync per commit, so its writes go through a group committer.
    # PostgreSQL takes concurrent writers and groups commits itself.
    committer: GroupCommitter | None

    def write(self, job: Callable[[Connection], T]) -> T:
        """Run ``job`` in a write transaction; returns only after that transaction is durably committed."""
        if self.committer is not None:
            return self.committer.run(job)
        with self.engine.begin() as connection:
            return job(connection)

    def close(self) -> None:
        if self.committer is not None:
            self.committer.close()
        self.engine.dispose()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets the dashboard read while reports are written; synchronous=FULL fsyncs every commit so
    # that an acknowledged report survives a power cut, not only a process kill.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def create_db_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(parsed, pool_pre_ping=True, pool_size=10, max_overflow=10)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        parsed,
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False},
        pool_size=10,
        max_overflow=10,
    )
    event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def open_database(url: str, *, migrate: bool = True) -> Database:
    """Connect and, unless told otherwise, bring the schema up to date with the shipped migrations."""
    engine = create_db_engine(url)
    if migrate:
        from sdk_tools.lab.migrate import upgrade_to_head

        upgrade_to_head(engine)
    committer = GroupCommitter(engine) if engine.dialect.name == "sqlite" else None
    return Database(engine=engine, sessions=sessionmaker(engine, expire_on_commit=False), committer=committer)
