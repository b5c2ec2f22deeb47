"""A lab whose database stops answering says 503 (retryable) and recovers when it comes back."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from sdk_tools.lab.client import post_report, register_device
from sdk_tools.lab.examples import example_report


def test_database_outage_is_503_then_recovers(new_server, db_factory, http_for) -> None:
    if db_factory.kind != "postgresql":
        pytest.skip("an outage is simulated by refusing PostgreSQL connections")
    server = new_server().start()
    device_id, token = register_device(server.url, "outage")
    url = make_url(server.db_url)
    admin = create_engine(url.set(database="postgres", query={}), isolation_level="AUTOCOMMIT")
    report = example_report(device_id)
    try:
        with admin.connect() as connection:
            connection.execute(text(f'ALTER DATABASE "{url.database}" ALLOW_CONNECTIONS false'))
            connection.execute(
                text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :db"),
                {"db": url.database},
            )
        api = http_for(server.url)
        answer = api.post("/api/v1/reports", report, token=token)
        assert answer.status == 503 and answer.body["message"].startswith("database unavailable")
        assert api.get("/api/v1/health").status == 503
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'ALTER DATABASE "{url.database}" ALLOW_CONNECTIONS true'))
        admin.dispose()
    assert post_report(server.url, token, report)["created"] is True
