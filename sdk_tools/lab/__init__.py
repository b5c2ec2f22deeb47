"""memwall device lab: collects measured training runs from phones and hosts and compares them with
the planner's predictions (HTTP API, dashboard, reporting).

Submodules import FastAPI, SQLAlchemy and matplotlib lazily from the CLI, so importing this package is
cheap; use ``sdk_tools.lab.client`` to post reports.
"""
