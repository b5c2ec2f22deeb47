"""Figures shown to users in more than one place (CLI, demo, benchmarks, lab dashboard and CSV), defined once.

Two definitions of the prediction error once disagreed: `memwall demo` printed +8.3% for a run the lab showed as
-7.7% (opposite signs, different denominators). Everything that shows the figure calls this module.
"""

from __future__ import annotations


def prediction_error(predicted_bytes: int, measured_bytes: int) -> float:
    """(predicted - measured) / measured: positive means the prediction was too high (the run used less).

    A measured figure of 0 or less counts as 1 byte, so the result stays a finite JSON number.
    """
    return (predicted_bytes - measured_bytes) / max(measured_bytes, 1)
