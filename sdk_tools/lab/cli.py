"""``memwall lab serve|register|report``; heavy imports happen inside the commands so that the
main CLI starts fast."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from sdk_tools.lab.config import DEFAULT_HOST, DEFAULT_MAX_BODY_BYTES, DEFAULT_PORT

DEFAULT_SERVER = f"http://{DEFAULT_HOST}:{DEFAULT_PORT}"


def _serve(args: argparse.Namespace) -> int:
    from sdk_tools.lab.config import LabConfig, ServeConfig, default_db_url
    from sdk_tools.lab.guards import is_loopback
    from sdk_tools.lab.server import serve

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Alembic announces each of its plugins at INFO on every start.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    try:
        lab = LabConfig(
            db_url=args.db or default_db_url(),
            max_body_bytes=args.max_body_bytes,
            loopback_only=is_loopback(args.host),
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    serve(ServeConfig(lab=lab, host=args.host, port=args.port, log_level=args.log_level))
    return 0


def _register(args: argparse.Namespace) -> int:
    from sdk_tools.lab.client import LabClientError, register_device

    try:
        device_id, token = register_device(args.server, args.name)
    except LabClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"device_id": device_id, "token": token}))
    else:
        print(f"device_id: {device_id}\ntoken:     {token}\n(store the token now; the lab keeps only its hash)")
    return 0


def _report(args: argparse.Namespace) -> int:
    from sdk_tools.lab.client import LabClientError
    from sdk_tools.lab.export import write_csv
    from sdk_tools.lab.report import plot_png, summaries_from_db, summaries_from_server
    from sdk_tools.lab.store import ReportFilter

    if not (args.png or args.csv):
        print("error: give --png FILE and/or --csv FILE", file=sys.stderr)
        return 2
    where = ReportFilter(device_id=args.device, backend=args.backend, model=args.model, status=args.status)
    try:
        if args.db:
            summaries = summaries_from_db(args.db, where)
        else:
            summaries = summaries_from_server(args.server or DEFAULT_SERVER, where)
    except (LabClientError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.csv:
        rows = write_csv(args.csv, summaries)
        print(f"wrote {rows} reports to {args.csv}")
    if args.png:
        groups = plot_png(summaries, args.png)
        print(f"wrote {args.png} ({groups} device/plan groups)")
    return 0


def configure_lab_parser(parser: argparse.ArgumentParser) -> None:
    """Add serve/register/report to ``parser`` (the ``lab`` command, or ``python -m sdk_tools.lab``)."""
    commands = parser.add_subparsers(dest="lab_command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the lab server (API and dashboard)")
    serve.add_argument("--host", default=DEFAULT_HOST, help="address to bind (default: %(default)s)")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (default: %(default)s)")
    serve.add_argument(
        "--db",
        metavar="URL",
        help="SQLAlchemy database URL, e.g. postgresql+psycopg://user:pw@host/db "
        "(default: SQLite file ./memwall_lab/lab.db)",
    )
    serve.add_argument(
        "--max-body-bytes",
        type=int,
        default=DEFAULT_MAX_BODY_BYTES,
        help="largest accepted request body; larger ones get 413 (default: %(default)s)",
    )
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.set_defaults(func=_serve)

    register = commands.add_parser("register", help="register a device; prints its id and bearer token")
    register.add_argument("--server", default=DEFAULT_SERVER, metavar="URL", help="lab URL (default: %(default)s)")
    register.add_argument("--name", required=True, help="device name shown on the dashboard")
    register.add_argument("--json", action="store_true", help="print {device_id, token} as JSON")
    register.set_defaults(func=_register)

    report = commands.add_parser("report", help="write a PNG and/or CSV of predicted vs measured peaks")
    report.add_argument("--png", type=Path, metavar="FILE", help="matplotlib chart of predicted vs measured")
    report.add_argument("--csv", type=Path, metavar="FILE", help="one row per report")
    source = report.add_mutually_exclusive_group()
    source.add_argument("--server", metavar="URL", help=f"read from a running lab (default: {DEFAULT_SERVER})")
    source.add_argument("--db", metavar="URL", help="read a lab database directly (SQLAlchemy URL)")
    for name in ("device", "backend", "model", "status"):
        report.add_argument(f"--{name}", help=f"only reports with this {name}")
    report.set_defaults(func=_report)


def add_lab_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Hook for the main ``memwall`` CLI: adds the ``lab`` command."""
    lab = subparsers.add_parser("lab", help="device lab: collect measured runs and compare them with predictions")
    configure_lab_parser(lab)
