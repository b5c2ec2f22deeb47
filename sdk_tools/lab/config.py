"""Settings for the lab server, as small immutable values passed down explicitly."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
# Request line + headers. A lab request needs under 2 KiB; without a limit uvicorn buffered a 2 MB header.
MAX_HEADER_BYTES = 64 * 1024
DEFAULT_DATA_DIR = Path("memwall_lab")


def default_db_url(data_dir: Path = DEFAULT_DATA_DIR) -> str:
    return f"sqlite:///{(data_dir / 'lab.db').resolve()}"


@dataclass(frozen=True)
class LabConfig:
    db_url: str
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    # Set when the server binds to a loopback address: requests naming another Host are refused.
    loopback_only: bool = False

    def __post_init__(self) -> None:
        if self.max_body_bytes < 1024:
            raise ValueError("max_body_bytes must be at least 1024")


@dataclass(frozen=True)
class ServeConfig:
    lab: LabConfig
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    log_level: str = "info"
    # Seconds in-flight requests get to finish (and commit) after SIGTERM before uvicorn drops them.
    graceful_shutdown_s: float = 10.0
