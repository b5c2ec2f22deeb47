"""Alembic environment: migrations always run online, on the engine handed over by sdk_tools.lab.migrate."""

from __future__ import annotations

from alembic import context

from sdk_tools.lab.models import Base

engine = context.config.attributes["engine"]
with engine.begin() as connection:
    # render_as_batch lets future ALTERs work on SQLite, which rebuilds tables instead.
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
