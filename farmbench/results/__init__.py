"""Results: the versioned SQLite store of runs, devices, artifacts and measurements, and latency statistics.

``ResultStore`` writes one transaction per finished measurement and reads records or a pandas frame back;
``stats`` turns raw per-iteration latencies into percentiles, spread and a bootstrap CI of the median.
Importing this package does not import pandas (only ``frame`` and ``export`` need it).
"""

from farmbench.errors import RunNotFoundError, StoreError
from farmbench.results.schema import (
    MIGRATIONS,
    SCHEMA_VERSION,
    ArtifactInfo,
    Baseline,
    DeviceInfo,
    MeasurementRecord,
    RunInfo,
)
from farmbench.results.scrub import scrub
from farmbench.results.stats import LatencyStats, summarize, summarize_aggregates
from farmbench.results.store import FRAME_COLUMNS, ResultStore, default_db_path

__all__ = [
    "FRAME_COLUMNS",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "ArtifactInfo",
    "Baseline",
    "DeviceInfo",
    "LatencyStats",
    "MeasurementRecord",
    "ResultStore",
    "RunInfo",
    "RunNotFoundError",
    "StoreError",
    "default_db_path",
    "scrub",
    "summarize",
    "summarize_aggregates",
]
