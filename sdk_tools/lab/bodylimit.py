"""ASGI middleware that refuses request bodies over a size limit with 413.

Uvicorn has no body limit of its own. Declared lengths are refused before any byte of the body is
read; chunked bodies are counted as they arrive and cut off at the limit.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sdk_tools.lab.errors import error_response


def _too_large(limit: int) -> str:
    return f"request body exceeds the limit of {limit} bytes (the server's --max-body-bytes)"


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                await error_response(400, "Content-Length is not a number")(scope, receive, send)
                return
            if int(declared) > self.max_body_bytes:
                await error_response(413, _too_large(self.max_body_bytes))(scope, receive, send)
                return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    # Raised inside the endpoint's body read, so the app's handlers turn it into a 413.
                    raise HTTPException(413, _too_large(self.max_body_bytes))
            return message

        await self.app(scope, limited_receive, send)
