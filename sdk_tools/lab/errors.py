"""The one error shape every lab endpoint answers with, so apps can show what was wrong."""

from __future__ import annotations

from collections.abc import Sequence
from http import HTTPStatus

from fastapi.responses import JSONResponse
from pydantic import BaseModel

from sdk_tools.lab.schema import FieldError


class ErrorDetail(BaseModel):
    path: str
    message: str


class ErrorBody(BaseModel):
    error: str
    message: str
    errors: list[ErrorDetail] = []


def error_response(
    status: int, message: str, errors: Sequence[FieldError] = (), headers: dict[str, str] | None = None
) -> JSONResponse:
    code = HTTPStatus(status).phrase.lower().replace(" ", "_")
    body = ErrorBody(
        error=code,
        message=message,
        errors=[ErrorDetail(path=e.path, message=e.message) for e in errors],
    )
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)
