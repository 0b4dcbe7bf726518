"""The results database schema, its migrations, and the records read from and written to it.

Schema history (``PRAGMA user_version`` holds the version; each step below runs in its own transaction):

* v1 -- runs, devices, artifacts, measurements.
* v2 -- indexes for resume (measurements by run and plan position), for regression checks (measurements by device
  and artifact across runs) and for "the previous run of this sweep" (runs by sweep hash and start time).
* v3 -- telemetry beside latency: ``power_json`` (source, idle and window power, energy per inference),
  ``power_samples`` (raw samples, ``power_samples_format``), ``thermal_json`` (temperatures before/after, cooldown,
  throttling) and ``drift_json`` (outputs against the fp32 reference on the evaluation set).
* v4 -- ``outputs``: the output tensor a measurement produced on the evaluation set (one row per measurement that
  ran the drift pass), so outputs can be compared between devices and delegates after the fact.
* v5 -- ``baselines``: named pointers to runs for regression checks (``farmbench baseline set NAME RUN``); setting a
  name again moves it (``set_at`` says when).

Steps are frozen once released: a change is a new step appended to ``MIGRATIONS``, never an edit of an old one
(tests/data/results_schema_v1.sql is the v1 schema as released, and a test checks step 1 still produces it).

Conventions: times are ISO 8601 UTC text with milliseconds (sortable as text); every ``*_json`` column holds a
JSON document that went through :func:`farmbench.results.scrub.scrub`; latencies are microseconds (``_us``).
"""

from __future__ import annotations

import json
import sqlite3
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from farmbench.errors import FarmbenchError
from farmbench.results.stats import LatencyStats

# These lists are baked into v1's CHECK constraints: adding a value is a new migration step (SQLite cannot alter
# a CHECK, so the step rebuilds the table), and the v1 golden test fails until that is done.
RUN_STATUSES: tuple[str, ...] = ("running", "finished", "interrupted", "failed")
DEVICE_KINDS: tuple[str, ...] = ("local", "ssh", "adb")
MEASUREMENT_STATUSES: tuple[str, ...] = ("ok", "failed", "skipped")

# Raw samples are stored as little-endian float64 bytes (8 bytes per iteration, exact, no parsing cost);
# samples_format names the encoding so another one can be added without a migration.
SAMPLES_FORMAT_F64LE = "f64le"
POWER_SAMPLES_FORMAT = "t_s,power_mw:f64le"
# Output tensors (evaluation images x classes) as zlib-compressed little-endian float32: dequantised int8 outputs
# hold at most 256 distinct values and compress several-fold; float logits barely, but cost ~256 KB per 64 images.
OUTPUTS_FORMAT = "f32le+zlib"


def _in(values: Sequence[str]) -> str:
    return "(" + ", ".join(f"'{v}'" for v in values) + ")"


def _execute_all(conn: sqlite3.Connection, script: str) -> None:
    """Run ';'-separated DDL one statement at a time: executescript() would COMMIT the migration's transaction
    first and leave a half-applied step behind a crash. (Our DDL has no ';' inside literals.)"""
    for statement in script.split(";"):
        if statement.strip():
            conn.execute(statement)


def _v1_tables(conn: sqlite3.Connection) -> None:
    _execute_all(conn, f"""
        CREATE TABLE runs (
            id                TEXT PRIMARY KEY,
            started_at        TEXT NOT NULL,
            finished_at       TEXT,
            status            TEXT NOT NULL CHECK (status IN {_in(RUN_STATUSES)}),
            git_commit        TEXT,
            sweep_name        TEXT NOT NULL,
            sweep_sha256      TEXT NOT NULL,
            sweep_json        TEXT NOT NULL,
            host              TEXT NOT NULL,
            farmbench_version TEXT NOT NULL,
            plan_json         TEXT NOT NULL,
            seed              INTEGER,
            command_json      TEXT NOT NULL
        );
        CREATE TABLE devices (
            id           INTEGER PRIMARY KEY,
            identity     TEXT NOT NULL UNIQUE,
            name         TEXT NOT NULL,
            kind         TEXT NOT NULL CHECK (kind IN {_in(DEVICE_KINDS)}),
            context_json TEXT NOT NULL,
            first_seen   TEXT NOT NULL,
            last_seen    TEXT NOT NULL
        );
        CREATE TABLE artifacts (
            key           TEXT PRIMARY KEY,
            name          TEXT NOT NULL,
            format        TEXT NOT NULL,
            sha256        TEXT,
            manifest_json TEXT NOT NULL
        );
        CREATE TABLE measurements (
            id              INTEGER PRIMARY KEY,
            run_id          TEXT NOT NULL REFERENCES runs(id),
            device_id       INTEGER NOT NULL REFERENCES devices(id),
            artifact_key    TEXT NOT NULL REFERENCES artifacts(key),
            artifact_sha256 TEXT,
            plan_index      INTEGER,
            repeat          INTEGER NOT NULL DEFAULT 0,
            runtime         TEXT NOT NULL,
            runtime_version TEXT,
            config_json     TEXT NOT NULL,
            status          TEXT NOT NULL CHECK (status IN {_in(MEASUREMENT_STATUSES)}),
            transient       INTEGER NOT NULL DEFAULT 0 CHECK (transient IN (0, 1)),
            error_class     TEXT,
            error_message   TEXT,
            samples         BLOB,
            samples_format  TEXT,
            aggregates_json TEXT NOT NULL,
            context_json    TEXT NOT NULL,
            flags_json      TEXT NOT NULL,
            started_at      TEXT NOT NULL,
            finished_at     TEXT NOT NULL
        );
    """)


def _v2_indexes(conn: sqlite3.Connection) -> None:
    _execute_all(conn, """
        CREATE INDEX measurements_by_run_plan ON measurements (run_id, plan_index);
        CREATE INDEX measurements_by_device_artifact ON measurements (device_id, artifact_key);
        CREATE INDEX runs_by_sweep ON runs (sweep_sha256, started_at);
    """)


def _v3_telemetry(conn: sqlite3.Connection) -> None:
    _execute_all(conn, """
        ALTER TABLE measurements ADD COLUMN power_json TEXT;
        ALTER TABLE measurements ADD COLUMN power_samples BLOB;
        ALTER TABLE measurements ADD COLUMN power_samples_format TEXT;
        ALTER TABLE measurements ADD COLUMN thermal_json TEXT;
        ALTER TABLE measurements ADD COLUMN drift_json TEXT
    """)


def _v4_outputs(conn: sqlite3.Connection) -> None:
    _execute_all(conn, """
        CREATE TABLE outputs (
            measurement_id INTEGER PRIMARY KEY REFERENCES measurements(id),
            format         TEXT NOT NULL,
            shape_json     TEXT NOT NULL,
            evalset        TEXT,
            data           BLOB NOT NULL
        )
    """)


def _v5_baselines(conn: sqlite3.Connection) -> None:
    _execute_all(conn, """
        CREATE TABLE baselines (
            name   TEXT PRIMARY KEY,
            run_id TEXT NOT NULL REFERENCES runs(id),
            set_at TEXT NOT NULL
        )
    """)


# MIGRATIONS[i] takes a database at version i to version i + 1; a new database runs them all. The store runs
# each step inside its own BEGIN IMMEDIATE ... COMMIT and sets user_version in the same transaction.
MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [
    _v1_tables, _v2_indexes, _v3_telemetry, _v4_outputs, _v5_baselines]
SCHEMA_VERSION = len(MIGRATIONS)


def encode_samples(samples_us: Sequence[float] | None) -> tuple[bytes | None, str | None]:
    if not samples_us:
        return None, None
    return np.asarray(samples_us, dtype="<f8").tobytes(), SAMPLES_FORMAT_F64LE


def encode_power_samples(samples: Sequence[tuple[float, float]] | None) -> tuple[bytes | None, str | None]:
    """(device time s, power mW) pairs as interleaved little-endian float64."""
    if not samples:
        return None, None
    return np.asarray(samples, dtype="<f8").reshape(-1).tobytes(), POWER_SAMPLES_FORMAT


def decode_power_samples(blob: bytes | None, fmt: str | None) -> list[tuple[float, float]] | None:
    if blob is None:
        return None
    if fmt != POWER_SAMPLES_FORMAT:
        raise ValueError(f"unknown power samples format {fmt!r}")
    pairs = np.frombuffer(blob, dtype="<f8").reshape(-1, 2)
    return [(float(t), float(p)) for t, p in pairs]


def decode_samples(blob: bytes | None, fmt: str | None) -> list[float] | None:
    if blob is None:
        return None
    if fmt != SAMPLES_FORMAT_F64LE:
        raise ValueError(f"unknown samples format {fmt!r}")
    return [float(v) for v in np.frombuffer(blob, dtype="<f8")]


def encode_outputs(outputs: np.ndarray) -> tuple[bytes, str, list[int]]:
    values = np.ascontiguousarray(outputs, dtype="<f4")
    return zlib.compress(values.tobytes(), 6), OUTPUTS_FORMAT, [int(n) for n in values.shape]


def decode_outputs(blob: bytes, fmt: str, shape: Sequence[int]) -> np.ndarray:
    if fmt != OUTPUTS_FORMAT:
        raise ValueError(f"unknown outputs format {fmt!r}")
    return np.frombuffer(zlib.decompress(blob), dtype="<f4").reshape(tuple(shape)).astype(np.float32)


def _load(text: str | None, default: Any) -> Any:
    return default if text is None else json.loads(text)


@dataclass(frozen=True)
class RunInfo:
    """One ``farmbench run``. ``plan`` is the ordered list of planned measurements (each a JSON object); a
    measurement's ``plan_index`` points into it, which is how a resume finds what is left."""

    id: str
    started_at: str
    status: str
    sweep_name: str
    sweep_sha256: str
    sweep: dict[str, Any]
    host: str
    farmbench_version: str
    plan: list[dict[str, Any]]
    command: list[str]
    seed: int | None = None
    git_commit: str | None = None
    finished_at: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> RunInfo:
        return cls(
            id=row["id"], started_at=row["started_at"], status=row["status"], sweep_name=row["sweep_name"],
            sweep_sha256=row["sweep_sha256"], sweep=_load(row["sweep_json"], {}), host=row["host"],
            farmbench_version=row["farmbench_version"], plan=_load(row["plan_json"], []),
            command=_load(row["command_json"], []), seed=row["seed"], git_commit=row["git_commit"],
            finished_at=row["finished_at"],
        )


@dataclass(frozen=True)
class DeviceInfo:
    """A device as last seen. ``identity`` is stable across runs (serial, or host-key fingerprint + hostname);
    ``context`` is the latest probe (each measurement keeps its own full context)."""

    id: int
    identity: str
    name: str
    kind: str
    context: dict[str, Any]
    first_seen: str
    last_seen: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> DeviceInfo:
        return cls(id=row["id"], identity=row["identity"], name=row["name"], kind=row["kind"],
                   context=_load(row["context_json"], {}), first_seen=row["first_seen"], last_seen=row["last_seen"])


@dataclass(frozen=True)
class ArtifactInfo:
    """An artifact as last recorded: ``manifest["spec"]`` says which variant it is (a generated one, or a user's
    file by name); ``key`` and ``sha256`` change whenever its bytes do."""

    key: str
    name: str
    format: str
    sha256: str | None
    manifest: dict[str, Any]

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> ArtifactInfo:
        return cls(key=row["key"], name=row["name"], format=row["format"], sha256=row["sha256"],
                   manifest=_load(row["manifest_json"], {}))


@dataclass(frozen=True)
class Baseline:
    """A named baseline: ``run_id`` is the run regression checks compare against when given ``name``."""

    name: str
    run_id: str
    set_at: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class MeasurementRecord:
    """One benchmark session of one artifact on one device with one runtime configuration.

    status: ``ok``; ``failed`` (error_class/error_message say why); ``skipped`` (the device cannot run this
    combination; error_message says why). ``transient`` marks a failure or skip that may succeed if tried again
    (a dropped connection, a device that went offline): a resume retries those, and does not retry the others.

    ``samples_us`` are the raw per-iteration latencies when the runtime gives them; ``latency`` their summary (the
    store computes it from ``samples_us`` when not given; aggregate-only runtimes pass
    ``stats.summarize_aggregates(...)``). ``config`` is the runtime configuration (threads, xnnpack/delegate,
    execution provider, affinity, warm-up and timed-run protocol); ``context`` everything that makes the number
    comparable (OS build, runtime and converter versions, governor, temperatures, charging state...).
    ``flags`` are the runner's trust flags; :meth:`all_flags` adds the statistics warnings.

    ``power`` (summary), ``power_samples`` (raw ``(device time s, power mW)``), ``thermal`` and ``drift`` are None
    when not measured; their documents are described in :mod:`farmbench.telemetry` and :mod:`farmbench.results.drift`.
    ``outputs`` is the output tensor of the drift pass (evaluation images x classes, float32): written with the
    record into the ``outputs`` table, read back with ``ResultStore.outputs`` (records read from the store carry
    None here, so listing measurements stays cheap).
    """

    run_id: str
    device_id: int
    artifact_key: str
    runtime: str
    status: str
    config: dict[str, Any] = field(default_factory=dict)
    plan_index: int | None = None
    repeat: int = 0
    runtime_version: str | None = None
    artifact_sha256: str | None = None
    transient: bool = False
    error_class: str | None = None
    error_message: str | None = None
    samples_us: list[float] | None = None
    latency: LatencyStats | None = None
    init_ms: float | None = None
    first_inference_ms: float | None = None
    peak_rss_mb: float | None = None
    context: dict[str, Any] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)
    started_at: str | None = None
    finished_at: str | None = None
    id: int | None = None
    power: dict[str, Any] | None = None
    power_samples: list[tuple[float, float]] | None = None
    thermal: dict[str, Any] | None = None
    drift: dict[str, Any] | None = None
    outputs: np.ndarray | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.status not in MEASUREMENT_STATUSES:
            raise ValueError(f"measurement status must be one of {MEASUREMENT_STATUSES}, got {self.status!r}")

    def with_error(self, exc: BaseException, *, status: str = "failed") -> MeasurementRecord:
        """This record marked failed (or skipped) by ``exc``. Transient when the exception says so
        (``TransportError.transient``); anything else, including bugs, is permanent: retrying will not help.
        farmbench's own errors keep their hint (what to do next) in the message."""
        message = exc.format() if isinstance(exc, FarmbenchError) else str(exc)
        return replace(self, status=status, error_class=type(exc).__name__, error_message=message,
                       transient=bool(getattr(exc, "transient", False)))

    def all_flags(self) -> list[str]:
        """Runner flags then statistics warnings, without repeats."""
        extra = self.latency.warnings if self.latency else ()
        return list(dict.fromkeys([*self.flags, *extra]))

    def aggregates_json(self) -> dict[str, Any]:
        """The ``aggregates_json`` document: computed statistics and the scalar measurements beside them."""
        return {
            "latency": self.latency.to_json() if self.latency else None,
            "init_ms": self.init_ms,
            "first_inference_ms": self.first_inference_ms,
            "peak_rss_mb": self.peak_rss_mb,
        }

    def to_json(self) -> dict[str, Any]:
        data = asdict(replace(self, outputs=None))
        data["outputs_shape"] = None if self.outputs is None else list(self.outputs.shape)
        del data["outputs"]
        data["latency"] = self.latency.to_json() if self.latency else None
        return data

    @classmethod
    def from_row(cls, row: sqlite3.Row, *, with_samples: bool = True) -> MeasurementRecord:
        aggregates: Mapping[str, Any] = _load(row["aggregates_json"], {})
        latency = aggregates.get("latency")
        return cls(
            id=row["id"], run_id=row["run_id"], device_id=row["device_id"], artifact_key=row["artifact_key"],
            artifact_sha256=row["artifact_sha256"], plan_index=row["plan_index"], repeat=row["repeat"],
            runtime=row["runtime"], runtime_version=row["runtime_version"], config=_load(row["config_json"], {}),
            status=row["status"], transient=bool(row["transient"]), error_class=row["error_class"],
            error_message=row["error_message"],
            samples_us=decode_samples(row["samples"], row["samples_format"]) if with_samples else None,
            latency=LatencyStats.from_json(latency) if latency else None,
            init_ms=aggregates.get("init_ms"), first_inference_ms=aggregates.get("first_inference_ms"),
            peak_rss_mb=aggregates.get("peak_rss_mb"), context=_load(row["context_json"], {}),
            flags=_load(row["flags_json"], []), started_at=row["started_at"], finished_at=row["finished_at"],
            power=_load(row["power_json"], None),
            power_samples=(decode_power_samples(row["power_samples"], row["power_samples_format"])
                           if with_samples else None),
            thermal=_load(row["thermal_json"], None), drift=_load(row["drift_json"], None),
        )
