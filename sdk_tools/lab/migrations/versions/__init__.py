"""Alembic revisions; Alembic skips this file when it collects revisions."""
