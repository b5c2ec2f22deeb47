"""Alembic migration environment for the lab database (a package so that it ships in the wheel)."""
