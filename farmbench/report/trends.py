"""Trend lines across the selected runs. Regression marks need the regression check (``farmbench check``), which
this farmbench does not have yet: the lines are drawn without verdicts, and the page says so."""

from __future__ import annotations

from typing import Any

from farmbench.report.data import ReportData
from farmbench.results.store import ResultStore

NO_MARKS = ("Lines only, without regression marks: this farmbench has no regression check yet. Read a rise of a "
            "line against the spread of its points across runs before calling it a regression.")


def mark_trends(store: ResultStore, data: ReportData) -> tuple[ReportData, str, list[Any]]:
    """``data`` with trend verdicts where a regression check can give them, the note the page shows above the
    trends, and the rows of the regression table."""
    del store
    if len(data.runs) < 2:
        return data, "Trends compare the selected runs; this report has one.", []
    return data, NO_MARKS, []
