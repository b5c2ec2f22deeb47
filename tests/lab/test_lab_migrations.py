"""The shipped Alembic migrations build exactly the ORM schema, on SQLite and PostgreSQL."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from sdk_tools.lab.db import create_db_engine
from sdk_tools.lab.migrate import MIGRATIONS_DIR, downgrade_to_base, upgrade_to_head
from sdk_tools.lab.models import Base


def test_migrations_match_models_and_round_trip(db_factory) -> None:
    engine = create_db_engine(db_factory.new_url())
    try:
        upgrade_to_head(engine)
        upgrade_to_head(engine)  # a second start finds nothing to do
        with engine.connect() as connection:
            assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
            assert connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalar() == "0001"
        downgrade_to_base(engine)
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
        upgrade_to_head(engine)
        assert {"devices", "reports"} <= set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_sqlite_runs_in_wal_mode_with_full_sync(db_factory) -> None:
    if db_factory.kind != "sqlite":
        return
    engine = create_db_engine(db_factory.new_url())
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
    engine.dispose()


def test_migration_scripts_ship_inside_the_package() -> None:
    assert (MIGRATIONS_DIR / "env.py").is_file()
    assert (MIGRATIONS_DIR / "script.py.mako").is_file()
    assert (MIGRATIONS_DIR / "versions" / "0001_initial.py").is_file()
