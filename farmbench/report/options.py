"""Report options and their defaults, importable without numpy, pandas or plotly (the CLI shows them in --help)."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_HISTORY = 10  # runs of the same sweep in the default selection, the latest included
DEFAULT_MIN_TOP1_AGREEMENT = 0.99  # the drift budget of "which variant to ship"
DEFAULT_MAX_POINTS = 200  # quantiles drawn per latency distribution
DEFAULT_DIRECTORY = "reports"  # under the current directory


@dataclass(frozen=True)
class ReportOptions:
    history: int = DEFAULT_HISTORY
    min_top1_agreement: float = DEFAULT_MIN_TOP1_AGREEMENT
    max_points: int = DEFAULT_MAX_POINTS
    self_contained: bool = False  # inline plotly.js instead of writing it beside the page
