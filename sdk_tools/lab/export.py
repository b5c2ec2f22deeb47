"""CSV export of report summaries, shared by ``/api/v1/reports.csv`` and ``memwall lab report --csv``."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from sdk_tools.lab.summary import SUMMARY_FIELDS, ReportSummary

# Device names and error kinds come from the apps; a cell starting with one of these would run as a
# formula when the CSV is opened in a spreadsheet.
_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(_FORMULA_PREFIXES):
        return "'" + value
    return "" if value is None else value


def csv_lines(summaries: Iterable[ReportSummary]) -> Iterator[str]:
    """The header line, then one chunk per summary, so a long export streams."""
    buffer = io.StringIO()
    # RFC 4180 line ends: the csv module quotes a field only if it holds a character of the line
    # terminator, so with "\n" alone a bare CR inside a device name would split the row in readers.
    writer = csv.writer(buffer, lineterminator="\r\n")

    def flush() -> str:
        text = buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        return text

    writer.writerow(SUMMARY_FIELDS)
    yield flush()
    for summary in summaries:
        writer.writerow([_cell(getattr(summary, name)) for name in SUMMARY_FIELDS])
        yield flush()


def write_csv(path: Path, summaries: Iterable[ReportSummary]) -> int:
    """Write summaries to ``path``; returns the number of data rows."""
    chunks = csv_lines(summaries)
    with path.open("w", encoding="utf-8", newline="") as out:
        out.write(next(chunks))
        rows = 0
        for chunk in chunks:
            out.write(chunk)
            rows += 1
    return rows
