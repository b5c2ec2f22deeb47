"""Fixtures for the device-lab tests: real lab servers (subprocesses on loopback) on real databases.

Every test that takes ``lab_db`` or ``lab_server`` runs once on SQLite and once on PostgreSQL; the
PostgreSQL runs need ``MEMWALL_TEST_POSTGRES_URL`` (see docs/lab.md, "CI") and are skipped without it.
Each PostgreSQL database is a fresh schema that is dropped afterwards, so the URL's database is never
wiped.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, func, select, text
from sqlalchemy.engine import make_url

from sdk_tools.lab.client import LabClientError, get_json, register_device
from sdk_tools.lab.models import Device, Report

REPO_ROOT = Path(__file__).resolve().parents[2]
POSTGRES_ENV = "MEMWALL_TEST_POSTGRES_URL"
BACKENDS = ("sqlite", "postgresql")
SERVER_START_TIMEOUT_S = 40.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class DatabaseFactory:
    """Makes empty databases of one kind and removes them at the end of the session."""

    def __init__(self, kind: str, tmp_dir: Path) -> None:
        self.kind = kind
        self.tmp_dir = tmp_dir
        self._schemas: list[str] = []
        self._admin: Engine | None = None
        if kind == "postgresql":
            base = os.environ.get(POSTGRES_ENV)
            if not base:
                pytest.skip(f"{POSTGRES_ENV} is not set; PostgreSQL runs need a server (docs/lab.md, CI)")
            self._base_url = make_url(base)
            self._admin = create_engine(self._base_url, isolation_level="AUTOCOMMIT", pool_pre_ping=True)

    def new_url(self) -> str:
        name = f"lab_test_{uuid.uuid4().hex[:12]}"
        if self._admin is None:
            return f"sqlite:///{self.tmp_dir / name / 'lab.db'}"
        with self._admin.connect() as connection:
            connection.execute(text(f'CREATE SCHEMA "{name}"'))
        self._schemas.append(name)
        url = self._base_url.update_query_dict({"options": f"-csearch_path={name}"})
        return url.render_as_string(hide_password=False)

    def close(self) -> None:
        if self._admin is None:
            return
        with self._admin.connect() as connection:
            for name in self._schemas:
                connection.execute(text(f'DROP SCHEMA "{name}" CASCADE'))
        self._admin.dispose()


class LabServer:
    """``python -m sdk_tools.lab serve`` in a subprocess, as a user would run it."""

    def __init__(self, db_url: str, log_path: Path, *, max_body_bytes: int | None = None) -> None:
        self.db_url = db_url
        self.log_path = log_path
        self.port = free_port()
        self.max_body_bytes = max_body_bytes
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LabServer:
        command = [sys.executable, "-m", "sdk_tools.lab", "serve", "--port", str(self.port)]
        command += ["--db", self.db_url, "--log-level", "warning"]
        if self.max_body_bytes:
            command += ["--max-body-bytes", str(self.max_body_bytes)]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"lab server exited with {self.process.returncode}:\n{self.log()}")
            try:
                if get_json(self.url, "/api/v1/health", timeout=1.0)["status"] == "ok":
                    return self
            except LabClientError:
                time.sleep(0.1)
        self.stop(signal.SIGKILL)
        raise RuntimeError(f"lab server did not become healthy:\n{self.log()}")

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout=30)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


@dataclass(frozen=True)
class RegisteredDevice:
    device_id: str
    token: str


class Rows:
    """Counts rows straight from the database, independently of the server."""

    def __init__(self, db_url: str) -> None:
        self.engine = create_engine(db_url, pool_pre_ping=True)

    def reports(self, **where: Any) -> int:
        query = select(func.count(Report.id)).filter_by(**where)
        with self.engine.connect() as connection:
            return connection.scalar(query) or 0

    def devices(self) -> int:
        with self.engine.connect() as connection:
            return connection.scalar(select(func.count(Device.id))) or 0

    def snapshot(self) -> tuple[int, int, int]:
        """(devices, reports, highest report row id): equal snapshots mean nothing was written."""
        with self.engine.connect() as connection:
            top = connection.scalar(select(func.coalesce(func.max(Report.id), 0))) or 0
        return self.devices(), self.reports(), top


@pytest.fixture(scope="session", params=BACKENDS)
def db_factory(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DatabaseFactory]:
    factory = DatabaseFactory(request.param, tmp_path_factory.mktemp(f"lab-{request.param}"))
    yield factory
    factory.close()


@pytest.fixture(scope="session")
def lab_server(db_factory: DatabaseFactory, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabServer]:
    log = tmp_path_factory.mktemp("lab-logs") / f"server-{db_factory.kind}.log"
    server = LabServer(db_factory.new_url(), log).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def rows(lab_server: LabServer) -> Iterator[Rows]:
    counter = Rows(lab_server.db_url)
    yield counter
    counter.engine.dispose()


@pytest.fixture
def device(lab_server: LabServer) -> RegisteredDevice:
    return RegisteredDevice(*register_device(lab_server.url, f"test-{uuid.uuid4().hex[:8]}"))


@pytest.fixture
def new_server(db_factory: DatabaseFactory, tmp_path: Path) -> Iterator[Any]:
    """Factory for servers with their own fresh database (for tests that stop servers)."""
    servers: list[LabServer] = []

    def make(**kwargs: Any) -> LabServer:
        server = LabServer(db_factory.new_url(), tmp_path / f"server-{len(servers)}.log", **kwargs)
        servers.append(server)
        return server

    yield make
    for server in servers:
        if server.alive():
            server.stop(signal.SIGKILL)


@dataclass(frozen=True)
class Answer:
    status: int
    body: Any
    headers: dict[str, str]


def _send(url: str, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> Answer:
    """One raw HTTP exchange, so tests control every byte and header the server sees."""
    parsed = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parsed.hostname or "127.0.0.1", parsed.port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        raw = response.read()
    finally:
        connection.close()
    content_type = response.getheader("Content-Type", "")
    parsed_body = json.loads(raw) if content_type.startswith("application/json") else raw.decode()
    return Answer(response.status, parsed_body, {k.lower(): v for k, v in response.getheaders()})


class Http:
    def __init__(self, url: str) -> None:
        self.url = url

    def get(self, path: str, **headers: str) -> Answer:
        return _send(self.url, "GET", path, headers=headers)

    def post(self, path: str, body: bytes | dict[str, Any], token: str | None = None, **headers: str) -> Answer:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        sent = {"Content-Type": "application/json", **headers}
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        return _send(self.url, "POST", path, data, sent)


@pytest.fixture
def api(lab_server: LabServer) -> Http:
    return Http(lab_server.url)


@pytest.fixture
def http_for() -> type[Http]:
    """``http_for(url)`` talks raw HTTP to a server the test started itself."""
    return Http


@pytest.fixture
def rows_for() -> Iterator[Any]:
    """``rows_for(db_url)`` counts rows in a database the test's own server uses."""
    made: list[Rows] = []

    def make(db_url: str) -> Rows:
        made.append(Rows(db_url))
        return made[-1]

    yield make
    for counter in made:
        counter.engine.dispose()
