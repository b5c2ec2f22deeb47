"""Load benchmark for the device lab: many phones posting at once, every report stored exactly once.

Starts ``python -m sdk_tools.lab serve`` on a free loopback port (SQLite in a temporary directory unless
``--db`` is given), registers one device per client, posts ``--reports`` reports from ``--clients``
concurrent clients, re-posts a fraction of them as a client would after a lost answer, then checks the
database and the API: each report stored once, each retry answered with the original id. Prints a table
and writes it to benchmarks/RESULTS-lab.md. Traffic stays on 127.0.0.1; the run is bounded by
``--time-limit``.

    python benchmarks/lab_load.py                     # SQLite
    python benchmarks/lab_load.py --db sqlite --db postgresql+psycopg://memwall:memwall@127.0.0.1/memwall_bench
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shlex
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from sqlalchemy import create_engine, func, select

from sdk_tools.lab.client import LabClientError, get_json, post_report, register_device
from sdk_tools.lab.examples import PLANS, example_report
from sdk_tools.lab.models import Report

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS = REPO_ROOT / "benchmarks" / "RESULTS-lab.md"


@dataclass(frozen=True)
class LoadConfig:
    reports: int
    clients: int
    retry_fraction: float
    db_url: str
    time_limit_s: float


@dataclass
class ClientResult:
    latencies_ms: list[float] = field(default_factory=list)
    created: int = 0
    retries_ok: int = 0
    failures: list[str] = field(default_factory=list)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_server(db_url: str, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    command = [sys.executable, "-m", "sdk_tools.lab", "serve", "--port", str(port), "--db", db_url]
    with log.open("wb") as out:
        process = subprocess.Popen([*command, "--log-level", "warning"], cwd=REPO_ROOT, stdout=out, stderr=out)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"lab server exited:\n{log.read_text()}")
        try:
            get_json(url, "/api/v1/health", timeout=1)
            return process, url
        except LabClientError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit("lab server did not start in 60 s")


def _run_client(url: str, token: str, device_id: str, count: int, config: LoadConfig, deadline: float) -> ClientResult:
    result = ClientResult()
    rng = random.Random(device_id)
    for index in range(count):
        if time.monotonic() > deadline:
            result.failures.append("time limit reached")
            break
        report = example_report(device_id, plan=PLANS[index % len(PLANS)], seed=rng.getrandbits(64))
        started = time.perf_counter()
        try:
            ack = post_report(url, token, report, retries=3, timeout=30)
        except LabClientError as exc:
            result.failures.append(str(exc))
            continue
        result.latencies_ms.append((time.perf_counter() - started) * 1000)
        result.created += ack["created"]
        if rng.random() < config.retry_fraction:
            # The phone lost the answer and sends the same report again.
            started = time.perf_counter()
            again = post_report(url, token, report, retries=3, timeout=30)
            result.latencies_ms.append((time.perf_counter() - started) * 1000)
            if again["id"] == ack["id"] and not again["created"]:
                result.retries_ok += 1
            else:
                result.failures.append(f"retry of {ack['report_id']} answered {again}")
    return result


def _stack() -> str:
    names = ("fastapi", "uvicorn", "httptools", "uvloop", "sqlalchemy", "psycopg", "jsonschema-rs")
    found = []
    for name in names:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return ", ".join(found)


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}"


def run(config: LoadConfig) -> dict[str, float | int | str]:
    with tempfile.TemporaryDirectory(prefix="memwall-lab-bench-") as tmp:
        db_url = config.db_url or f"sqlite:///{Path(tmp) / 'lab.db'}"
        server, url = _start_server(db_url, Path(tmp) / "server.log")
        try:
            devices = [register_device(url, f"bench-{i:02d}") for i in range(config.clients)]
            share = [
                config.reports // config.clients + (i < config.reports % config.clients) for i in range(config.clients)
            ]
            deadline = time.monotonic() + config.time_limit_s
            started = time.perf_counter()
            with ThreadPoolExecutor(max_workers=config.clients) as pool:
                futures = [
                    pool.submit(_run_client, url, token, device_id, count, config, deadline)
                    for (device_id, token), count in zip(devices, share, strict=True)
                ]
                results = [f.result() for f in futures]
            elapsed = time.perf_counter() - started
            api_total = sum(get_json(url, "/api/v1/reports", {"device": d, "limit": 1})["total"] for d, _ in devices)
        finally:
            server.terminate()
            server.wait(timeout=30)
        engine = create_engine(db_url)
        with engine.connect() as connection:
            device_ids = [d for d, _ in devices]
            mine = Report.device_id.in_(device_ids)
            stored = connection.scalar(select(func.count()).where(mine))
            distinct = connection.scalar(
                select(func.count()).select_from(
                    select(Report.device_id, Report.report_id).where(mine).distinct().subquery()
                )
            )
        engine.dispose()

    latencies = sorted(ms for r in results for ms in r.latencies_ms)
    failures = [f for r in results for f in r.failures]
    created = sum(r.created for r in results)
    requests = len(latencies)
    return {
        "database": db_url.split(":", 1)[0].split("+", 1)[0],
        "clients": config.clients,
        "reports": config.reports,
        "requests (incl. retries)": requests,
        "retries answered with the same id": sum(r.retries_ok for r in results),
        "stored (db)": stored,
        "distinct (device, report_id)": distinct,
        "stored (API totals)": api_total,
        "failed posts": len(failures),
        "wall time s": round(elapsed, 2),
        "requests/s": round(requests / elapsed, 1),
        "new reports/s": round(created / elapsed, 1),
        "latency p50 ms": round(statistics.median(latencies), 1) if latencies else 0,
        "latency p95 ms": round(latencies[int(0.95 * (requests - 1))], 1) if latencies else 0,
        "latency p99 ms": round(latencies[int(0.99 * (requests - 1))], 1) if latencies else 0,
        "latency max ms": round(latencies[-1], 1) if latencies else 0,
        "ok": str(not failures and stored == distinct == api_total == created == config.reports),
        "_first_failures": "; ".join(failures[:3]),
    }


def _table(runs: list[dict[str, float | int | str]]) -> str:
    keys = [k for k in runs[0] if not k.startswith("_")]
    lines = ["| metric | " + " | ".join(str(r["database"]) for r in runs) + " |"]
    lines.append("|---|" + "---:|" * len(runs))
    lines += [f"| {k} | " + " | ".join(str(r[k]) for r in runs) + " |" for k in keys[1:]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reports", type=int, default=5000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--retry-fraction", type=float, default=0.05, help="share of reports posted twice")
    parser.add_argument(
        "--db",
        action="append",
        default=[],
        metavar="URL",
        help="database URL; repeat to compare (default: SQLite)",
    )
    parser.add_argument("--time-limit", type=float, default=300.0, help="seconds before clients give up")
    parser.add_argument("--results", type=Path, default=RESULTS, help="markdown file to write")
    args = parser.parse_args(argv)

    runs = []
    for db in args.db or ["sqlite"]:
        db_url = "" if db == "sqlite" else db
        config = LoadConfig(args.reports, args.clients, args.retry_fraction, db_url, args.time_limit)
        runs.append(run(config))
        if runs[-1]["_first_failures"]:
            print(f"failures: {runs[-1]['_first_failures']}", file=sys.stderr)
    table = _table(runs)
    print(table)
    command = shlex.join(["python", "benchmarks/lab_load.py", *(argv if argv is not None else sys.argv[1:])])
    args.results.write_text(
        "# Device lab load benchmark\n\n"
        f"- date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}\n"
        f"- command: `{command}`\n"
        f"- machine: {_machine()}; server and clients share the machine, all traffic on 127.0.0.1\n"
        f"- server: one `memwall lab serve` process; {_stack()}\n"
        "- each client is one registered device posting over a new HTTP connection per request with\n"
        "  the stdlib client (`sdk_tools.lab.client.post_report`); SQLite runs in WAL mode with\n"
        "  synchronous=FULL, so every acknowledged report was fsynced\n\n"
        f"{table}\n"
    )
    print(f"wrote {args.results}")
    return 0 if all(r["ok"] == "True" for r in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
