"""SQLite group commit: shared transactions, answers only after commit, failures stay with their job."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sqlalchemy import Connection, create_engine, text

from sdk_tools.lab.groupcommit import GroupCommitter


def test_concurrent_jobs_commit_and_a_failing_one_fails_alone(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'g.db'}")
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE t (n INTEGER PRIMARY KEY)"))
    committer = GroupCommitter(engine, max_batch=16)
    release = threading.Event()

    def insert(n: int) -> int:
        def job(connection: Connection) -> int:
            release.wait(5)  # hold the writer so the other jobs queue up into one batch
            if n == 13:
                raise ValueError("unlucky")
            connection.execute(text("INSERT INTO t (n) VALUES (:n)"), {"n": n})
            return n

        return committer.run(job)

    with ThreadPoolExecutor(max_workers=32) as pool:
        futures = [pool.submit(insert, n) for n in range(32)]
        release.set()
        outcomes = {n: f.exception() or f.result() for n, f in enumerate(futures)}
    committer.close()

    assert isinstance(outcomes.pop(13), ValueError)
    assert outcomes == {n: n for n in outcomes}
    with engine.connect() as connection:
        stored = {row[0] for row in connection.execute(text("SELECT n FROM t"))}
    assert stored == set(range(32)) - {13}
    engine.dispose()


def test_close_stops_the_writer_thread(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'g.db'}")
    committer = GroupCommitter(engine)
    assert committer.run(lambda connection: connection.execute(text("SELECT 41 + 1")).scalar()) == 42
    committer.close()
    assert not any(t.name == "lab-group-commit" and t.is_alive() for t in threading.enumerate())
    engine.dispose()
