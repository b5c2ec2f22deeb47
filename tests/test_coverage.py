"""The operator coverage table (docs/coverage.md) is what ``python -m sdk_tools.coverage`` measures: the whole table
is measured again in the real runtimes (small shapes, two child processes, as the script runs it) and must give
the committed cells; every row of the script is in the committed table, and the table's counts add up.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sdk_tools.coverage import BACKENDS, ROWS, ROWS_BY_NAME, STATUSES, main
from tests.conftest import CoverageCells

TABLE = Path(__file__).resolve().parents[1] / "docs" / "coverage.md"


def committed_cells() -> dict[str, dict[str, str]]:
    """docs/coverage.md's layer rows: layer -> backend -> cell text."""
    cells: dict[str, dict[str, str]] = {}
    for line in TABLE.read_text().splitlines():
        parts = [part.strip() for part in line.strip().strip("|").split("|")]
        if len(parts) == len(BACKENDS) + 2 and parts[0] in ROWS_BY_NAME:
            cells[parts[0]] = dict(zip(BACKENDS, parts[1:-1], strict=True))
    return cells


def test_committed_table_has_every_row() -> None:
    assert list(committed_cells()) == [row.name for row in ROWS], (
        "regenerate: python -m sdk_tools.coverage --out docs/coverage.md"
    )


@pytest.mark.slow  # 104 verified exports: 200 s on the idle CI machine
def test_the_whole_table_remeasured_equals_the_committed_one(coverage_cells: CoverageCells) -> None:
    committed = committed_cells()
    cells = coverage_cells.measure([row.name for row in ROWS], BACKENDS)
    measured = {(row, backend): cell.markdown() for (row, backend), cell in cells.items()}
    differ = {(row, b): (committed[row][b], now) for (row, b), now in measured.items() if committed[row][b] != now}
    assert len(measured) == len(ROWS) * len(BACKENDS)
    assert not differ, f"regenerate docs/coverage.md (python -m sdk_tools.coverage --out docs/coverage.md): {differ}"


def test_committed_counts_add_up() -> None:
    cells = committed_cells()
    text = TABLE.read_text()
    for backend in BACKENDS:
        column = [row[backend] for row in cells.values()]
        count = {status: sum(cell.split(":")[0] == status for cell in column) for status in STATUSES}
        rewritten = sum(cell.startswith("trains: ") for cell in column)
        assert sum(count.values()) == len(ROWS)
        assert f"| {backend} | {count['trains']} | {rewritten} | {count['refused']} | {count['crashes']} |" in text


def test_unknown_row_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--rows", "NoSuchLayer"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown rows ['NoSuchLayer']" in err
