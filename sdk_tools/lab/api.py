"""The versioned HTTP API (``/api/v1``) and the application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http import HTTPStatus
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from sqlalchemy import text
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException

from sdk_tools.lab import store
from sdk_tools.lab.bodylimit import BodyLimitMiddleware
from sdk_tools.lab.config import LabConfig
from sdk_tools.lab.dashboard import dashboard_router, mount_static
from sdk_tools.lab.db import Database
from sdk_tools.lab.errors import ErrorBody, error_response
from sdk_tools.lab.export import csv_lines
from sdk_tools.lab.guards import GuardMiddleware
from sdk_tools.lab.openapi import REPORT_REF, lab_openapi
from sdk_tools.lab.schema import (
    SCHEMA_VERSION,
    FieldError,
    ReportInvalid,
    json_path,
    parse_report,
    report_schema,
)
from sdk_tools.lab.summary import ReportSummary

API_PREFIX = "/api/v1"
# Row ids are 64-bit in PostgreSQL; a larger number in a URL would fail in the database, not here.
MAX_ROW_ID = 2**63 - 1
# PostgreSQL text cannot hold U+0000: a NUL in a name or a filter would fail in the database (a 500).
NO_NUL = r"^[^\x00]*$"
_bearer = HTTPBearer(auto_error=False, description="Token returned by POST /api/v1/devices")
_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorBody} for code in (400, 401, 403, 404, 409, 413, 422)}


class DeviceIn(BaseModel):
    name: str = Field(
        min_length=1, max_length=200, pattern=NO_NUL, description="Human-readable name shown on the dashboard"
    )


class DeviceCreated(BaseModel):
    device_id: str
    token: str = Field(description="Bearer token for posting reports; shown once, only its hash is kept")


class DeviceOut(BaseModel):
    device_id: str
    name: str
    created_at: str
    reports: int


class ReportAck(BaseModel):
    id: int
    report_id: str
    created: bool = Field(description="False when this report_id was already stored (a retry)")


class ReportPage(BaseModel):
    items: list[ReportSummary]
    total: int
    next_cursor: int | None = Field(description="Pass as ?cursor= to get the next (older) page")


class ReportDetail(BaseModel):
    summary: ReportSummary
    report: dict[str, Any]


class Health(BaseModel):
    status: str
    database: str
    api_version: str = "v1"
    schema_version: int = SCHEMA_VERSION


async def _database(request: Request) -> Database:
    # async: FastAPI would run a plain function in the thread pool, a needless hop per request.
    return request.app.state.db


DB = Annotated[Database, Depends(_database)]
Bearer = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def _authenticated_device(db: Database, credentials: HTTPAuthorizationCredentials | None) -> str:
    challenge = {"WWW-Authenticate": "Bearer"}
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise HTTPException(401, "missing bearer token (Authorization: Bearer <token>)", headers=challenge)
    device_id = store.device_for_token(db, credentials.credentials)
    if device_id is None:
        raise HTTPException(401, "unknown bearer token (register the device: memwall lab register)", headers=challenge)
    return device_id


async def _filters(
    device: Annotated[str | None, Query(max_length=36, pattern=NO_NUL)] = None,
    backend: Annotated[str | None, Query(max_length=32, pattern=NO_NUL)] = None,
    model: Annotated[str | None, Query(max_length=200, pattern=NO_NUL)] = None,
    status: Annotated[str | None, Query(max_length=16, pattern=NO_NUL)] = None,
) -> store.ReportFilter:
    return store.ReportFilter(device_id=device, backend=backend, model=model, status=status)


Filters = Annotated[store.ReportFilter, Depends(_filters)]


def _ingest(db: Database, credentials: HTTPAuthorizationCredentials | None, body: bytes) -> store.StoredReport:
    """Everything blocking about a post, in one trip to the thread pool."""
    device_id = _authenticated_device(db, credentials)
    report = parse_report(body)
    if report["device"]["device_id"].lower() != device_id:
        raise HTTPException(403, "device.device_id is not the device this bearer token belongs to")
    try:
        return store.add_report(db, device_id, report)
    except store.ReportConflict as exc:
        raise HTTPException(409, str(exc)) from exc


router = APIRouter(prefix=API_PREFIX, responses=_ERRORS)


@router.get("/health", response_model=Health, responses={503: {"model": ErrorBody}})
def health(db: DB) -> Health | JSONResponse:
    try:
        with db.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:
        return error_response(503, f"database unavailable: {type(exc).__name__}")
    return Health(status="ok", database=db.engine.dialect.name)


@router.get("/schemas/report.v1.json", summary="The report JSON Schema (the contract with the apps)")
def get_schema() -> dict[str, Any]:
    return report_schema()


@router.post("/devices", status_code=201, response_model=DeviceCreated)
def register_device(db: DB, device: DeviceIn) -> DeviceCreated:
    device_id, token = store.register_device(db, device.name)
    return DeviceCreated(device_id=device_id, token=token)


@router.get("/devices", response_model=list[DeviceOut])
def list_devices(db: DB) -> list[dict[str, Any]]:
    return store.list_devices(db)


@router.post(
    "/reports",
    status_code=201,
    response_model=ReportAck,
    responses={200: {"model": ReportAck, "description": "Already stored (a retry); nothing written"}},
    openapi_extra={
        "requestBody": {"required": True, "content": {"application/json": {"schema": {"$ref": REPORT_REF}}}}
    },
)
async def post_report(request: Request, response: Response, db: DB, credentials: Bearer) -> ReportAck:
    """Store a report once per (device, run.report_id). 201 when stored now, 200 for a retry."""
    body = await request.body()
    stored = await run_in_threadpool(_ingest, db, credentials, body)
    response.status_code = 201 if stored.created else 200
    response.headers["Location"] = f"{API_PREFIX}/reports/{stored.id}"
    return ReportAck(id=stored.id, report_id=stored.report_id, created=stored.created)


@router.get("/reports", response_model=ReportPage)
def list_reports(
    db: DB,
    where: Filters,
    limit: Annotated[int, Query(ge=1, le=store.MAX_PAGE)] = 100,
    cursor: Annotated[int | None, Query(ge=1, le=MAX_ROW_ID)] = None,
) -> ReportPage:
    page = store.list_reports(db, where, limit, cursor)
    return ReportPage(items=page.items, total=page.total, next_cursor=page.next_cursor)


@router.get(
    "/reports.csv",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/csv": {"schema": {"type": "string"}}}, "description": "One row per report"}},
)
def export_reports_csv(db: DB, where: Filters) -> StreamingResponse:
    return StreamingResponse(
        csv_lines(store.iter_reports(db, where)),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="memwall-lab-reports.csv"'},
    )


@router.get("/reports/{row_id}", response_model=ReportDetail)
def get_report(db: DB, row_id: Annotated[int, Path(ge=1, le=MAX_ROW_ID)]) -> ReportDetail:
    found = store.get_report(db, row_id)
    if found is None:
        raise HTTPException(404, f"no report with id {row_id}")
    summary, report = found
    return ReportDetail(summary=summary, report=report)


_ROUTING_ERRORS = {
    404: f"no such endpoint (the API is listed at {API_PREFIX}/openapi.json)",
    405: f"method not allowed on this endpoint (see {API_PREFIX}/openapi.json)",
}


def _request_error(error: dict[str, Any]) -> str:
    if error.get("type") == "string_pattern_mismatch" and error.get("ctx", {}).get("pattern") == NO_NUL:
        return "contains a NUL character (U+0000), which the lab cannot store; remove it"
    return str(error["msg"])


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ReportInvalid)
    async def _invalid(_request: Request, exc: ReportInvalid) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.errors)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        message = str(exc.detail)
        if exc.status_code in _ROUTING_ERRORS and message == HTTPStatus(exc.status_code).phrase:
            # The router's own 404/405 carry only the status phrase: say what was asked and where to look.
            message = f"{request.method} {request.url.path[:200]}: {_ROUTING_ERRORS[exc.status_code]}"
        return error_response(exc.status_code, message, headers=exc.headers)

    @app.exception_handler(OperationalError)
    async def _database_down(_request: Request, exc: OperationalError) -> JSONResponse:
        # Nothing was acknowledged; clients retry 503 with the same report_id.
        return error_response(503, f"database unavailable: {exc.orig.__class__.__name__ if exc.orig else exc}")

    @app.exception_handler(RequestValidationError)
    async def _request_invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [FieldError(json_path(list(e["loc"])), _request_error(e)) for e in exc.errors()]
        first = errors[0] if errors else FieldError("$", "invalid request")
        return error_response(422, f"invalid request: {first.path}: {first.message}", errors)


def create_app(db: Database, config: LabConfig) -> FastAPI:
    """The lab application; ``db`` must already be migrated and is closed at shutdown."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        db.close()

    app = FastAPI(
        title="memwall device lab",
        version="1",
        openapi_url=f"{API_PREFIX}/openapi.json",
        # The interactive docs load their scripts from a CDN, which the lab must not depend on.
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.db = db
    app.openapi = lambda: lab_openapi(app)  # type: ignore[method-assign]
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=config.max_body_bytes)
    # Added last, so outermost: the body limit's and the Host check's own answers get the headers too.
    app.add_middleware(GuardMiddleware, loopback_only=config.loopback_only)
    _install_error_handlers(app)
    app.include_router(router)
    app.include_router(dashboard_router)
    mount_static(app)
    return app
