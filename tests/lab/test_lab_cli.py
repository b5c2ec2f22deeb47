"""``python -m sdk_tools.lab register|report`` as a user runs them (the same parser as ``memwall lab``)."""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

from sdk_tools.lab.cli import add_lab_parser
from sdk_tools.lab.client import post_report
from sdk_tools.lab.examples import PLANS, example_report

REPO_ROOT = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def lab(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sdk_tools.lab", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_hook_adds_lab_commands_to_a_main_parser() -> None:
    parser = argparse.ArgumentParser(prog="memwall")
    add_lab_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["lab", "serve", "--port", "9999", "--max-body-bytes", "2048"])
    assert (args.port, args.host, args.max_body_bytes, args.db) == (9999, "127.0.0.1", 2048, None)
    assert callable(args.func)
    args = parser.parse_args(["lab", "report", "--png", "x.png", "--db", "sqlite:///x.db"])
    assert callable(args.func) and args.png == Path("x.png")


def test_register_then_report_from_server_and_from_db(lab_server, rows, tmp_path: Path) -> None:
    registered = lab("register", "--server", lab_server.url, "--name", "cli-phone", "--json")
    assert registered.returncode == 0, registered.stderr
    device = json.loads(registered.stdout)
    for plan in PLANS:
        post_report(lab_server.url, device["token"], example_report(device["device_id"], plan=plan))
    post_report(lab_server.url, device["token"], example_report(device["device_id"], status="oom"))

    png, csv_path = tmp_path / "lab.png", tmp_path / "lab.csv"
    common = ["--device", device["device_id"], "--png", str(png), "--csv", str(csv_path)]
    for source in (["--server", lab_server.url], ["--db", lab_server.db_url]):
        png.unlink(missing_ok=True)
        made = lab("report", *source, *common)
        assert made.returncode == 0, made.stderr
        assert "wrote 4 reports" in made.stdout and "3 device/plan groups" in made.stdout
        assert png.read_bytes().startswith(PNG_MAGIC) and png.stat().st_size > 20_000
        table = list(csv.DictReader(csv_path.open()))
        assert sorted(r["plan"] for r in table) == ["full-finetune", "lora-r8", "lora-r8", "lora-r8+recompute"]
        assert {r["device_name"] for r in table} == {"cli-phone"}


def test_register_prints_token_for_people(lab_server) -> None:
    registered = lab("register", "--server", lab_server.url, "--name", "bench-phone")
    assert registered.returncode == 0
    assert registered.stdout.startswith("device_id: ") and "token:" in registered.stdout


def test_clear_errors_and_exit_codes(tmp_path: Path) -> None:
    unreachable = lab("register", "--server", "http://127.0.0.1:9", "--name", "x")
    assert unreachable.returncode == 1 and "error: POST http://127.0.0.1:9/api/v1/devices failed" in unreachable.stderr
    no_output = lab("report", "--server", "http://127.0.0.1:9")
    assert no_output.returncode == 2 and "--png" in no_output.stderr
    missing_db = lab("report", "--db", f"sqlite:///{tmp_path / 'none.db'}", "--csv", str(tmp_path / "x.csv"))
    assert missing_db.returncode == 1 and "no lab database" in missing_db.stderr
    bad_db = lab("serve", "--db", "postgresql+psycopg://nobody:x@127.0.0.1:9/none", "--port", "1")
    assert bad_db.returncode != 0 and "OperationalError" in bad_db.stderr
