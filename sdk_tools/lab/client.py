"""Client side of the lab: register a device, post reports with safe retries, describe this host.

Standard library only, so ``memwall measure/demo --lab`` can post from any environment that runs
memwall.
"""

from __future__ import annotations

import hashlib
import json
import platform
import random
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

DEFAULT_TIMEOUT_S = 10.0
# Statuses that a later identical request can succeed on; everything else 4xx is the caller's fault.
RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


class LabClientError(Exception):
    """The lab refused a request or could not be reached; ``status`` is None for network failures."""

    def __init__(self, message: str, status: int | None = None, body: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body or {}


def _endpoint(url: str, path: str, query: dict[str, Any] | None = None) -> str:
    base = url.rstrip("/")
    params = {k: v for k, v in (query or {}).items() if v is not None}
    return f"{base}{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")


def _request(
    method: str,
    url: str,
    *,
    body: dict[str, Any] | None = None,
    token: str | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> tuple[int, Any]:
    headers = {"Accept": "application/json"}
    data = None
    if body is not None:
        data = json.dumps(body, allow_nan=False).encode("utf-8")
        headers["Content-Type"] = "application/json"
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        with exc:
            raw = exc.read()
        try:
            detail = json.loads(raw)
        except ValueError:
            detail = {"message": raw.decode("utf-8", "replace")[:500]}
        detail = detail if isinstance(detail, dict) else {"message": str(detail)}
        message = f"{method} {url} -> {exc.code}: {detail.get('message', exc.reason)}"
        raise LabClientError(message, status=exc.code, body=detail) from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise LabClientError(f"{method} {url} failed: {reason}") from exc


def register_device(url: str, name: str, *, timeout: float = DEFAULT_TIMEOUT_S) -> tuple[str, str]:
    """Register a device with the lab at ``url``; returns (device_id, bearer token)."""
    _, body = _request("POST", _endpoint(url, "/api/v1/devices"), body={"name": name}, timeout=timeout)
    return body["device_id"], body["token"]


def post_report(
    url: str,
    token: str,
    report: dict[str, Any],
    retries: int = 3,
    *,
    timeout: float = DEFAULT_TIMEOUT_S,
    backoff_s: float = 0.5,
    max_backoff_s: float = 8.0,
) -> dict[str, Any]:
    """Post a report, retrying network failures and 5xx/429 answers with the same body.

    Retrying is safe because the lab stores a report once per ``run.report_id``: a retry of a post whose
    answer was lost comes back with ``created: false`` and the id of the stored row.
    """
    endpoint = _endpoint(url, "/api/v1/reports")
    attempt = 0
    while True:
        try:
            return _request("POST", endpoint, body=report, token=token, timeout=timeout)[1]
        except LabClientError as exc:
            if exc.status not in RETRYABLE_STATUSES and exc.status is not None:
                raise
            if attempt >= retries:
                raise LabClientError(f"{exc} (gave up after {attempt + 1} attempts)", exc.status, exc.body) from exc
        # Full jitter keeps many phones retrying after a lab restart from arriving in lockstep.
        time.sleep(random.uniform(0, min(max_backoff_s, backoff_s * 2**attempt)))
        attempt += 1


def get_json(url: str, path: str, query: dict[str, Any] | None = None, **kwargs: Any) -> Any:
    return _request("GET", _endpoint(url, path, query), **kwargs)[1]


def iter_summaries(url: str, **filters: str | None) -> Iterator[dict[str, Any]]:
    """Every report summary on the server matching the filters (device, backend, model, status)."""
    cursor = None
    while True:
        page = get_json(url, "/api/v1/reports", {**filters, "limit": 500, "cursor": cursor})
        yield from page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return ""


def _meminfo_bytes(field: str) -> int | None:
    for line in _read("/proc/meminfo").splitlines():
        name, _, value = line.partition(":")
        if name == field:
            return int(value.split()[0]) * 1024
    return None


def _cpu_model() -> str:
    for line in _read("/proc/cpuinfo").splitlines():
        name, _, value = line.partition(":")
        if name.strip() in ("model name", "Hardware", "Model") and value.strip():
            return value.strip()
    return platform.processor() or platform.machine() or "unknown"


def host_device_info() -> dict[str, Any]:
    """The report's ``device`` section for this host, without ``device_id`` (add the registered id)."""
    info: dict[str, Any] = {
        "model": _read("/sys/class/dmi/id/product_name") or platform.node() or "host",
        "manufacturer": _read("/sys/class/dmi/id/sys_vendor") or "unknown",
        "os": platform.system().lower() or "unknown",
        "os_version": platform.release() or "unknown",
        "ram_bytes": _meminfo_bytes("MemTotal") or 0,
        "abi": platform.machine() or "unknown",
        "cpu": _cpu_model(),
    }
    # Empty or over-long values would fail the schema's label rule.
    return {k: (v[:200] if isinstance(v, str) else v) for k, v in info.items()}


def bundle_section(manifest_path: Path, runtime: str | None = None) -> dict[str, Any]:
    """The report's ``bundle`` section for a bundle directory's manifest.json: its predicted peak is the one for
    ``runtime`` (a key of ``memory.by_runtime``) where the manifest has one, else the top-level (host runner's)."""
    raw = manifest_path.read_bytes()
    manifest = json.loads(raw)
    memory = manifest.get("memory") or {}
    prediction = (memory.get("by_runtime") or {}).get(runtime) or memory
    model = manifest.get("model") or {}
    return {
        "manifest_sha256": hashlib.sha256(raw).hexdigest(),
        "name": manifest["name"],
        "backend": manifest["backend"],
        # The manifest's model is {spec, kwargs, ...}; the lab groups runs by the spec (or the bundle name).
        "model": model.get("spec") or manifest["name"],
        # The manifest lists techniques as [{name, config}]; the lab's plan is {name: config}.
        "plan": {t["name"]: t["config"] for t in manifest.get("techniques") or []},
        "predicted_peak_bytes": prediction["predicted_peak_bytes"],
        "predicted": {k: v for k, v in memory.items() if isinstance(v, int) and not isinstance(v, bool)},
    }
