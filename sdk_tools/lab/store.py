"""Reads and writes of devices and reports; every function is one short transaction."""

from __future__ import annotations

import hashlib
import json
import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Any

from sqlalchemy import Connection, Select, bindparam, func, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import defer

from sdk_tools.lab.db import Database
from sdk_tools.lab.models import Device, Report
from sdk_tools.lab.summary import ReportSummary, iso_utc, measured_peak_bytes, plan_label

MAX_PAGE = 500
ERROR_MESSAGE_CHARS = 500


class ReportConflict(Exception):
    """The device already stored a different report under the same report_id."""


@dataclass(frozen=True)
class ReportFilter:
    device_id: str | None = None
    backend: str | None = None
    model: str | None = None
    status: str | None = None

    def apply(self, query: Select[Any]) -> Select[Any]:
        for column, value in (
            (Report.device_id, self.device_id),
            (Report.backend, self.backend),
            (Report.model, self.model),
            (Report.status, self.status),
        ):
            if value is not None:
                query = query.where(column == value)
        return query


@dataclass(frozen=True)
class StoredReport:
    id: int
    report_id: str
    created: bool


@dataclass(frozen=True)
class Page:
    items: list[ReportSummary]
    total: int
    next_cursor: int | None


def token_digest(token: str) -> str:
    # Tokens are 256-bit random values, so a plain sha256 is enough: there is nothing to brute-force
    # and a slow password hash would only cost every request.
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


# Writes and the per-request token lookup use Core statements built once: the ORM unit of work and
# per-call statement construction cost more CPU than the rest of a post.
_DEVICE_BY_TOKEN = select(Device.id).where(Device.token_sha256 == bindparam("digest"))


def register_device(db: Database, name: str) -> tuple[str, str]:
    device_id = str(uuid.uuid4())
    token = secrets.token_urlsafe(32)
    row = {
        "id": device_id,
        "name": name,
        "token_sha256": token_digest(token),
        "created_at": datetime.now(UTC),
    }
    db.write(lambda connection: connection.execute(insert(Device), row))
    return device_id, token


def device_for_token(db: Database, token: str) -> str | None:
    with db.engine.connect() as connection:
        return connection.scalar(_DEVICE_BY_TOKEN, {"digest": token_digest(token)})


def canonical_json(report: dict[str, Any]) -> str:
    return json.dumps(report, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


@cache
def _insert_new_report(dialect_name: str) -> Any:
    """INSERT that skips an existing (device_id, report_id) and returns the new row id, if any."""
    dialect = postgresql if dialect_name == "postgresql" else sqlite
    return (
        dialect.insert(Report)
        .on_conflict_do_nothing(index_elements=[Report.device_id, Report.report_id])
        .returning(Report.id)
    )


_EXISTING_REPORT = select(Report.id, Report.payload_sha256).where(
    Report.device_id == bindparam("device_id"), Report.report_id == bindparam("report_id")
)


def add_report(db: Database, device_id: str, report: dict[str, Any]) -> StoredReport:
    """Store a validated report once per (device, report_id); the commit is durable on return."""
    payload = canonical_json(report)
    digest = hashlib.sha256(payload.encode("ascii")).hexdigest()
    bundle, run, memory = report["bundle"], report["run"], report.get("memory")
    error = report.get("error") or {}
    values = {
        "device_id": device_id,
        "report_id": run["report_id"].lower(),
        "received_at": datetime.now(UTC),
        "started_at": datetime.fromisoformat(run["started_at"]).astimezone(UTC),
        "status": report["status"],
        "backend": bundle["backend"],
        "model": bundle["model"],
        "device_model": report["device"]["model"],
        "bundle_name": bundle["name"],
        "manifest_sha256": bundle["manifest_sha256"],
        "plan_label": plan_label(bundle["plan"]),
        "predicted_peak_bytes": bundle["predicted_peak_bytes"],
        "measured_peak_bytes": measured_peak_bytes(memory),
        "peak_rss_bytes": (memory or {}).get("peak_rss_bytes"),
        "error_kind": error.get("kind"),
        "error_message": error["message"][:ERROR_MESSAGE_CHARS] if "message" in error else None,
        "payload_sha256": digest,
        "payload": payload,
    }
    inserted, existing = db.write(lambda connection: _insert_or_find(connection, values))
    if inserted is not None:
        return StoredReport(id=inserted, report_id=values["report_id"], created=True)
    row_id, stored_digest = existing
    if stored_digest != digest:
        raise ReportConflict(f"report_id {values['report_id']} was already stored with different content")
    return StoredReport(id=row_id, report_id=values["report_id"], created=False)


def _insert_or_find(connection: Connection, values: dict[str, Any]) -> tuple[int | None, Any]:
    # Insert first: ON CONFLICT makes a concurrent retry of the same report wait for the first one and
    # then find it, where a read-then-insert would let both pass the read.
    inserted = connection.scalar(_insert_new_report(connection.dialect.name), values)
    if inserted is not None:
        return inserted, None
    return None, connection.execute(_EXISTING_REPORT, values).one()


def _rows(db: Database, query: Select[Any]) -> list[tuple[Report, str]]:
    with db.sessions() as session:
        result = session.execute(query.join(Device, Device.id == Report.device_id).add_columns(Device.name))
        return [(report, name) for report, name in result]


def _summaries(db: Database, query: Select[Any]) -> list[ReportSummary]:
    # Payloads can be large (memory samples); summaries never need them.
    return [ReportSummary.from_row(r, name) for r, name in _rows(db, query.options(defer(Report.payload)))]


def list_reports(db: Database, where: ReportFilter, limit: int, cursor: int | None = None) -> Page:
    """Newest first; ``cursor`` is the ``next_cursor`` of the previous page (stable while rows arrive)."""
    limit = max(1, min(limit, MAX_PAGE))
    query = where.apply(select(Report)).order_by(Report.id.desc()).limit(limit + 1)
    if cursor is not None:
        query = query.where(Report.id < cursor)
    items = _summaries(db, query)
    with db.sessions() as session:
        total = session.scalar(where.apply(select(func.count(Report.id)))) or 0
    more = len(items) > limit
    items = items[:limit]
    return Page(items=items, total=total, next_cursor=items[-1].id if more else None)


def iter_reports(db: Database, where: ReportFilter, batch: int = MAX_PAGE) -> Iterator[ReportSummary]:
    cursor: int | None = None
    while True:
        page = list_reports(db, where, batch, cursor)
        yield from page.items
        if page.next_cursor is None:
            return
        cursor = page.next_cursor


def get_report(db: Database, row_id: int) -> tuple[ReportSummary, dict[str, Any]] | None:
    rows = _rows(db, select(Report).where(Report.id == row_id))
    if not rows:
        return None
    report, name = rows[0]
    return ReportSummary.from_row(report, name), json.loads(report.payload)


def count_reports(db: Database) -> int:
    with db.sessions() as session:
        return session.scalar(select(func.count(Report.id))) or 0


def list_devices(db: Database) -> list[dict[str, Any]]:
    with db.sessions() as session:
        rows = session.execute(
            select(Device.id, Device.name, Device.created_at, func.count(Report.id))
            .outerjoin(Report, Report.device_id == Device.id)
            .group_by(Device.id)
            .order_by(Device.created_at)
        )
        return [
            {"device_id": device_id, "name": name, "created_at": iso_utc(created), "reports": reports}
            for device_id, name, created, reports in rows
        ]
