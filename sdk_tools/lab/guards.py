"""ASGI middleware every lab response passes through: security headers and the Host check.

Pure ASGI rather than ``BaseHTTPMiddleware`` so that streamed responses (the CSV export) stay streamed
and responses made by inner middleware (the body limit's 413) get the headers too.
"""

from __future__ import annotations

import ipaddress

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sdk_tools.lab.errors import error_response

# JSON, CSV and static files are never documents a browser should run or frame; the dashboard page
# sets its own, looser policy (dashboard.CONTENT_SECURITY_POLICY) and keeps it.
DEFAULT_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
)


def is_loopback(host: str) -> bool:
    """True for an address or name that only this machine can reach."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_name(header: str) -> str:
    """``example.org:8765`` -> ``example.org``; ``[::1]:8765`` -> ``::1``; lowercased."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class GuardMiddleware:
    """Adds the security headers to every response; refuses foreign Host headers when ``loopback_only``.

    A lab bound to 127.0.0.1 is still reachable from a web page on another site through DNS rebinding
    (a name that resolves to 127.0.0.1 after the page loaded); such requests carry that name as Host.
    """

    def __init__(self, app: ASGIApp, *, loopback_only: bool) -> None:
        self.app = app
        self.loopback_only = loopback_only

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers += [(name, value) for name, value in SECURITY_HEADERS if name not in present]
                if b"content-security-policy" not in present:
                    headers.append((b"content-security-policy", DEFAULT_CSP.encode()))
                message = {**message, "headers": headers}
            await send(message)

        if self.loopback_only:
            host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
            if not is_loopback(host_name(host)):
                refusal = error_response(
                    400,
                    f"Host {host[:100]!r} is not this lab: a lab bound to loopback answers only to "
                    "localhost, 127.0.0.1 or [::1] (serve with --host 0.0.0.0 to accept other names)",
                )
                await refusal(scope, receive, send_with_headers)
                return
        await self.app(scope, receive, send_with_headers)
