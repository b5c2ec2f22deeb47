"""Group commit for SQLite: writes from many request threads share one transaction and one fsync.

SQLite has a single writer and, with synchronous=FULL, an fsync per commit; committing each report on
its own capped the lab at the disk's fsync rate. Here one thread runs the queued write jobs of all
waiting requests in a single transaction and answers each of them only after that commit returned, so
an acknowledged report is still a durable one.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine

T = TypeVar("T")
Job = Callable[[Connection], Any]
log = logging.getLogger("memwall.lab")


class GroupCommitter:
    def __init__(self, engine: Engine, max_batch: int = 64) -> None:
        self._engine = engine
        self._max_batch = max_batch
        self._jobs: queue.SimpleQueue[tuple[Job, Future[Any]] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name="lab-group-commit", daemon=True)
        self._thread.start()

    def run(self, job: Callable[[Connection], T]) -> T:
        """Run ``job`` in a shared transaction; returns its result once the transaction is committed.

        A job may run twice (again on its own when another job failed the shared transaction), so it
        must do nothing but database work on the connection it is given.
        """
        future: Future[T] = Future()
        self._jobs.put((job, future))
        return future.result()

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join()

    def _serve(self) -> None:
        while (first := self._jobs.get()) is not None:
            batch = [first]
            while len(batch) < self._max_batch:
                try:
                    item = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._jobs.put(None)  # stop after this batch
                    break
                batch.append(item)
            self._commit(batch)

    def _commit(self, batch: list[tuple[Job, Future[Any]]]) -> None:
        try:
            with self._engine.begin() as connection:
                results = [job(connection) for job, _ in batch]
        except Exception as exc:
            if len(batch) == 1:
                batch[0][1].set_exception(exc)
                return
            # One job failed and took the shared transaction with it: run each alone, so that only the
            # failing request sees an error.
            log.debug("group commit of %d jobs failed; retrying them one by one", len(batch))
            for item in batch:
                self._commit([item])
            return
        for (_, future), result in zip(batch, results, strict=True):
            future.set_result(result)
