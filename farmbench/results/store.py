"""The SQLite results store: append measurement records, query them as records or as a pandas frame.

Durability: WAL journal with ``synchronous=FULL`` and one ``BEGIN IMMEDIATE`` transaction per write, so once
:meth:`ResultStore.add_measurement` returns, that measurement survives the process being killed (even SIGKILL) or
the machine losing power. ``BEGIN IMMEDIATE`` takes the write lock up front: in WAL mode a deferred transaction
that later needs to write fails at once with SQLITE_BUSY instead of waiting out the busy timeout.

Concurrency: several processes (each its own ``ResultStore``) wait for each other up to ``BUSY_TIMEOUT_S``;
threads sharing one ``ResultStore`` are serialised by a lock, because one SQLite connection holds one transaction.
The database must be on a local filesystem (WAL needs shared memory between the processes that open it).
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from farmbench import __version__
from farmbench.errors import DatabaseNotFoundError, RunNotFoundError, StoreError, UsageError
from farmbench.results.schema import (
    DEVICE_KINDS,
    MIGRATIONS,
    RUN_STATUSES,
    SCHEMA_VERSION,
    ArtifactInfo,
    Baseline,
    DeviceInfo,
    MeasurementRecord,
    RunInfo,
    decode_outputs,
    encode_outputs,
    encode_power_samples,
    encode_samples,
)
from farmbench.results.scrub import scrub
from farmbench.results.stats import summarize
from farmbench.variants.spec import canonical_hash

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

BUSY_TIMEOUT_S = 30.0
EXPORT_FORMATS: tuple[str, ...] = ("csv", "parquet", "json")

# The columns of ResultStore.frame(), in order, with the dtype of each non-text column (text columns keep what
# pandas infers, so missing values stay missing on pandas 2 and 3 alike). The first block is the documented
# analysis view; the second carries what regression checks and resume need to tell measurements apart.
FRAME_COLUMNS: dict[str, str | None] = {
    "run_id": None, "device": None, "device_identity": None, "artifact": None,
    "family": None, "width": "float64", "resolution": "Int64", "quant": None, "format": None,
    "runtime": None, "runtime_version": None, "threads": "Int64", "delegate": None, "xnnpack": None,
    "status": None,
    "p50_us": "float64", "p90_us": "float64", "p99_us": "float64", "mean_us": "float64", "std_us": "float64",
    "cv": "float64", "min_us": "float64", "ci95_low_us": "float64", "ci95_high_us": "float64",
    "n_samples": "Int64", "init_ms": "float64", "peak_rss_mb": "float64",
    "avg_power_mw": "float64", "energy_per_inference_mj": "float64", "energy_above_idle_mj": "float64",
    "max_temp_before_c": "float64", "max_temp_after_c": "float64",
    "top1_agreement": "float64", "top5_overlap": "float64", "kl_mean": "float64", "cosine_mean": "float64",
    "max_abs_error": "float64", "flags": None,
    "error_class": None, "error_message": None,
    "measurement_id": "Int64", "artifact_key": None, "artifact_sha256": None, "plan_index": "Int64",
    "repeat": "Int64", "max_us": "float64", "p5_us": "float64", "p95_us": "float64",
    "first_inference_ms": "float64", "transient": "boolean", "started_at": None, "finished_at": None,
}
_SPEC_FIELDS: tuple[str, ...] = ("family", "width", "resolution", "quant")
_POWER_FIELDS: tuple[str, ...] = ("avg_power_mw", "energy_per_inference_mj", "energy_above_idle_mj")
_THERMAL_FIELDS: tuple[str, ...] = ("max_temp_before_c", "max_temp_after_c")
_DRIFT_FIELDS: tuple[str, ...] = ("top1_agreement", "top5_overlap", "kl_mean", "cosine_mean", "max_abs_error")
_LATENCY_FIELDS: tuple[str, ...] = ("p50_us", "p90_us", "p99_us", "mean_us", "std_us", "cv", "min_us",
                                    "ci95_low_us", "ci95_high_us", "max_us", "p5_us", "p95_us")


def default_db_path() -> Path:
    """``$FARMBENCH_DB``, else ``$XDG_DATA_HOME/farmbench/results.db``, else ``~/.local/share/farmbench/results.db``.
    Data, not cache: results must survive a cache clean-up."""
    explicit = os.environ.get("FARMBENCH_DB")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share"
    return base / "farmbench" / "results.db"


def utc_now() -> str:
    """Now as ISO 8601 UTC text with milliseconds, e.g. ``2026-11-21T02:30:00.123Z`` (sorts as text)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_run_id(now: datetime | None = None) -> str:
    """``r20261121-023000-ab12``: UTC start time (so ids sort by time) and 16 random bits."""
    now = now or datetime.now(UTC)
    return f"r{now:%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def _json(obj: Any) -> str:
    """The one way a document becomes a ``*_json`` column: scrubbed of secrets, canonical key order."""
    return json.dumps(scrub(obj), sort_keys=True, separators=(",", ":"), allow_nan=False, default=str)


class ResultStore:
    """The results database at ``path`` (default :func:`default_db_path`), created and migrated on open.

    ``create=False`` refuses a missing file instead of creating it (for commands that only read results).
    """

    def __init__(self, path: str | Path | None = None, *, create: bool = True) -> None:
        self.path = Path(path) if path is not None else default_db_path()
        if not self.path.exists():
            if not create:
                raise DatabaseNotFoundError(f"no results database at {self.path}",
                                 hint="run `farmbench run` first, or point --db / FARMBENCH_DB at an existing file")
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        try:
            # isolation_level=None: the sqlite3 module opens no transactions of its own; we issue BEGIN/COMMIT.
            self._conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                                         check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open results database {self.path}: {exc}") from exc
        self._conn.row_factory = sqlite3.Row
        try:
            self._conn.execute("PRAGMA journal_mode = WAL")
            # FULL (not WAL's usual NORMAL): with NORMAL a power cut can drop the last committed measurements.
            self._conn.execute("PRAGMA synchronous = FULL")
            self._conn.execute("PRAGMA foreign_keys = ON")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            raise StoreError(f"{self.path} is not a usable farmbench results database: {exc}",
                             hint="point --db / FARMBENCH_DB at another file, or move this one away") from exc
        except BaseException:
            self._conn.close()
            raise
        self._measurement_columns = [row["name"] for row in self._conn.execute("PRAGMA table_info(measurements)")]

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def schema_version(self) -> int:
        return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, committed on success and rolled back on any exception."""
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise StoreError(f"{self.path}: could not lock the results database within {BUSY_TIMEOUT_S:g} s "
                                 f"({exc})", hint="another farmbench is writing to it; try again when it is done"
                                 ) from exc
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

    def _migrate(self) -> None:
        version = self.schema_version()
        while True:
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"results database {self.path} has schema version {version}, newer than this farmbench "
                    f"{__version__} understands (schema version {SCHEMA_VERSION}); upgrade farmbench to use it",
                    hint="pip install -U farmbench, or point --db / FARMBENCH_DB at another file")
            if version == SCHEMA_VERSION:
                return
            with self._transaction() as conn:
                # Re-read under the write lock: another process may have migrated while we waited for it.
                version = self.schema_version()
                if version < SCHEMA_VERSION:
                    MIGRATIONS[version](conn)
                    version += 1
                    conn.execute(f"PRAGMA user_version = {version:d}")

    # -- runs --------------------------------------------------------------------------------------------------

    def start_run(
        self,
        *,
        sweep_name: str,
        sweep: Mapping[str, Any],
        plan: Sequence[Mapping[str, Any]],
        command: Sequence[str],
        seed: int | None = None,
        git_commit: str | None = None,
        host: str | None = None,
    ) -> str:
        """Record a new run (status ``running``) and return its id. ``plan`` is the ordered list of planned
        measurements; record each measurement with its position in it (``plan_index``) so a resume can skip what
        is done. ``sweep_sha256`` is the sha256 of the sweep's canonical JSON (as stored, i.e. scrubbed)."""
        sweep_doc = scrub(dict(sweep))
        started_at = utc_now()
        with self._transaction() as conn:
            run_id = new_run_id()
            while conn.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone():
                run_id = new_run_id()
            conn.execute(
                "INSERT INTO runs (id, started_at, status, git_commit, sweep_name, sweep_sha256, sweep_json, host,"
                " farmbench_version, plan_json, seed, command_json) VALUES (?, ?, 'running', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, started_at, git_commit, sweep_name, canonical_hash(sweep_doc), _json(sweep_doc),
                 host or socket.gethostname(), __version__, _json(list(plan)), seed, _json(list(command))),
            )
        return run_id

    def finish_run(self, run_id: str, status: str = "finished") -> None:
        """Mark a run finished, interrupted or failed, and stamp its end time."""
        if status not in RUN_STATUSES or status == "running":
            raise ValueError(f"a run ends as finished, interrupted or failed, not {status!r}")
        self._set_run_status(run_id, status, utc_now())

    def resume_run(self, run_id: str) -> RunInfo:
        """Mark a run ``running`` again (clearing its end time) and return it; continue it with
        :meth:`done_plan_indices`. A run that was killed still says ``running``; resuming it is fine."""
        self._set_run_status(run_id, "running", None)
        return self.run(run_id)

    def _set_run_status(self, run_id: str, status: str, finished_at: str | None) -> None:
        with self._transaction() as conn:
            cursor = conn.execute("UPDATE runs SET status = ?, finished_at = ? WHERE id = ?",
                                  (status, finished_at, run_id))
            if cursor.rowcount == 0:
                raise self._run_not_found([run_id])

    def run(self, run_id: str) -> RunInfo:
        with self._lock:
            row = self._conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise self._run_not_found([run_id])
        return RunInfo.from_row(row)

    def runs(self) -> list[RunInfo]:
        """Every run, oldest first."""
        with self._lock:
            rows = self._conn.execute("SELECT * FROM runs ORDER BY started_at, id").fetchall()
        return [RunInfo.from_row(row) for row in rows]

    def _run_not_found(self, run_ids: Iterable[str]) -> RunNotFoundError:
        return RunNotFoundError(f"no run {', '.join(map(repr, run_ids))} in {self.path}",
                                hint="`farmbench results` lists the runs it holds")

    def _check_runs(self, run_ids: Sequence[str]) -> None:
        with self._lock:
            found = {row[0] for row in self._conn.execute(
                f"SELECT id FROM runs WHERE id IN ({','.join('?' * len(run_ids))})", list(run_ids))}
        missing = [r for r in run_ids if r not in found]
        if missing:
            raise self._run_not_found(missing)

    # -- devices and artifacts -----------------------------------------------------------------------------------

    def upsert_device(self, identity: str, name: str, kind: str, context: Mapping[str, Any]) -> int:
        """The id of the device with this identity, creating it or refreshing its name, kind, context and
        last_seen. The identity never changes, so measurements across runs stay matched to one device."""
        if not identity:
            raise ValueError("a device identity must not be empty")
        if kind not in DEVICE_KINDS:
            raise ValueError(f"device kind must be one of {DEVICE_KINDS}, got {kind!r}")
        now = utc_now()
        with self._transaction() as conn:
            row = conn.execute(
                "INSERT INTO devices (identity, name, kind, context_json, first_seen, last_seen)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (identity) DO UPDATE SET name = excluded.name,"
                " kind = excluded.kind, context_json = excluded.context_json, last_seen = excluded.last_seen"
                " RETURNING id",
                (identity, name, kind, _json(dict(context)), now, now),
            ).fetchall()  # all, not one: a RETURNING statement left unfinished would block the COMMIT
        return int(row[0][0])

    def devices(self) -> list[DeviceInfo]:
        with self._lock:
            rows = self._conn.execute("SELECT * FROM devices ORDER BY id").fetchall()
        return [DeviceInfo.from_row(row) for row in rows]

    def put_artifact(self, key: str, name: str, format: str, sha256: str | None,
                     manifest: Mapping[str, Any]) -> None:
        """Record an artifact. A later build under the same key replaces the stored sha256 and manifest (each
        measurement keeps the sha256 it measured); ``sha256=None`` (never built) never replaces a built one."""
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO artifacts (key, name, format, sha256, manifest_json) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (key) DO UPDATE SET name = excluded.name, format = excluded.format,"
                " sha256 = excluded.sha256, manifest_json = excluded.manifest_json"
                " WHERE excluded.sha256 IS NOT NULL OR artifacts.sha256 IS NULL",
                (key, name, format, sha256, _json(dict(manifest))),
            )

    def artifacts(self) -> dict[str, ArtifactInfo]:
        """Every recorded artifact by key."""
        with self._lock:
            rows = self._conn.execute("SELECT * FROM artifacts").fetchall()
        return {row["key"]: ArtifactInfo.from_row(row) for row in rows}

    # -- baselines and run history (regression checks) -------------------------------------------------------------

    def set_baseline(self, name: str, run_id: str) -> str | None:
        """Point baseline ``name`` at ``run_id``, creating it or moving it; returns the run it pointed to before
        (None when new). Names are checked by the caller (``farmbench.results.compare.check_baseline_name``)."""
        with self._transaction() as conn:
            if conn.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone() is None:
                raise self._run_not_found([run_id])
            row = conn.execute("SELECT run_id FROM baselines WHERE name = ?", (name,)).fetchone()
            conn.execute("INSERT INTO baselines (name, run_id, set_at) VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE"
                         " SET run_id = excluded.run_id, set_at = excluded.set_at", (name, run_id, utc_now()))
        return None if row is None else str(row[0])

    def delete_baseline(self, name: str) -> bool:
        """Forget baseline ``name`` (its run stays); False when there was none."""
        with self._transaction() as conn:
            return conn.execute("DELETE FROM baselines WHERE name = ?", (name,)).rowcount > 0

    def baseline(self, name: str) -> Baseline | None:
        with self._lock:
            row = self._conn.execute("SELECT * FROM baselines WHERE name = ?", (name,)).fetchone()
        return None if row is None else Baseline(name=row["name"], run_id=row["run_id"], set_at=row["set_at"])

    def baselines(self) -> list[Baseline]:
        """Every named baseline, by name."""
        with self._lock:
            rows = self._conn.execute("SELECT * FROM baselines ORDER BY name").fetchall()
        return [Baseline(name=row["name"], run_id=row["run_id"], set_at=row["set_at"]) for row in rows]

    def earlier_runs_of_sweep(self, sweep_sha256: str, before: str, status: str = "finished") -> list[RunInfo]:
        """Runs of the sweep with this hash that started before ``before`` (ISO time) and ended as ``status``,
        newest first (the ``runs_by_sweep`` index)."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT * FROM runs WHERE sweep_sha256 = ? AND started_at < ? AND status = ?"
                " ORDER BY started_at DESC, id DESC", (sweep_sha256, before, status)).fetchall()
        return [RunInfo.from_row(row) for row in rows]

    def run_device_identities(self, run_id: str) -> set[str]:
        """Identities of the devices that have measurements in ``run_id``."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT DISTINCT d.identity FROM measurements m JOIN devices d ON d.id = m.device_id"
                " WHERE m.run_id = ?", (run_id,)).fetchall()
        return {str(row[0]) for row in rows}

    # -- measurements ------------------------------------------------------------------------------------------

    def add_measurement(self, record: MeasurementRecord) -> int:
        """Append one measurement in its own transaction and return its id. Fills in ``latency`` from
        ``samples_us`` (``stats.summarize``) when not given, and start/finish times when missing."""
        # Statistics (the bootstrap takes ~0.1 s per 1000 samples) are computed before taking the write lock,
        # so other writers do not wait for them.
        if record.latency is None and record.samples_us:
            record = replace(record, latency=summarize(record.samples_us))
        now = utc_now()
        samples, samples_format = encode_samples(record.samples_us)
        power_samples, power_format = encode_power_samples(record.power_samples)
        outputs = None if record.outputs is None or record.status != "ok" else encode_outputs(record.outputs)
        with self._transaction() as conn:
            cursor = conn.execute(
                "INSERT INTO measurements (run_id, device_id, artifact_key, artifact_sha256, plan_index, repeat,"
                " runtime, runtime_version, config_json, status, transient, error_class, error_message, samples,"
                " samples_format, aggregates_json, context_json, flags_json, started_at, finished_at,"
                " power_json, power_samples, power_samples_format, thermal_json, drift_json)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (record.run_id, record.device_id, record.artifact_key, record.artifact_sha256, record.plan_index,
                 record.repeat, record.runtime, record.runtime_version, _json(record.config), record.status,
                 int(record.transient), record.error_class, record.error_message, samples, samples_format,
                 _json(record.aggregates_json()), _json(record.context), _json(list(record.flags)),
                 record.started_at or now, record.finished_at or now,
                 None if record.power is None else _json(record.power), power_samples, power_format,
                 None if record.thermal is None else _json(record.thermal),
                 None if record.drift is None else _json(record.drift)),
            )
            assert cursor.lastrowid is not None
            if outputs is not None:
                evalset = (record.drift or {}).get("evalset") or {}
                conn.execute("INSERT INTO outputs (measurement_id, format, shape_json, evalset, data)"
                             " VALUES (?, ?, ?, ?, ?)",
                             (cursor.lastrowid, outputs[1], _json(outputs[2]), evalset.get("digest"), outputs[0]))
        return int(cursor.lastrowid)

    def outputs(self, measurement_ids: Iterable[int]) -> dict[int, tuple[np.ndarray, str | None]]:
        """The stored output tensors of these measurements, with the digest of the evaluation set they were
        computed on; measurements without outputs are absent."""
        ids = [int(i) for i in measurement_ids]
        found: dict[int, tuple[np.ndarray, str | None]] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            with self._lock:
                rows = self._conn.execute(
                    f"SELECT measurement_id, format, shape_json, evalset, data FROM outputs"
                    f" WHERE measurement_id IN ({','.join('?' * len(chunk))})", chunk).fetchall()
            for row in rows:
                found[int(row["measurement_id"])] = (
                    decode_outputs(row["data"], row["format"], json.loads(row["shape_json"])), row["evalset"])
        return found

    def measurements(self, run_ids: Sequence[str] | None = None, *,
                     with_samples: bool = True) -> list[MeasurementRecord]:
        """Measurement records with their raw samples (unless ``with_samples`` is false), oldest first; all runs,
        or those named."""
        return self._select_measurements(run_ids, with_samples=with_samples)

    def artifact_names(self) -> dict[str, str]:
        """Artifact key -> file name, for every artifact ever measured."""
        with self._lock:
            return {row["key"]: row["name"] for row in self._conn.execute("SELECT key, name FROM artifacts")}

    def _select_measurements(self, run_ids: Sequence[str] | None, *, with_samples: bool) -> list[MeasurementRecord]:
        columns = ", ".join(f"NULL AS {c}" if c in ("samples", "power_samples") and not with_samples else c
                            for c in self._measurement_columns)
        query = f"SELECT {columns} FROM measurements"
        params: list[str] = []
        if run_ids is not None:
            self._check_runs(run_ids)
            query += f" WHERE run_id IN ({','.join('?' * len(run_ids))})"
            params = list(run_ids)
        with self._lock:
            rows = self._conn.execute(query + " ORDER BY id", params).fetchall()
        return [MeasurementRecord.from_row(row, with_samples=with_samples) for row in rows]

    def done_plan_indices(self, run_id: str) -> set[int]:
        """Plan positions of ``run_id`` that need no more work: measured ok, or failed/skipped for a reason that
        retrying will not fix (``transient`` false). A resume runs the rest."""
        self._check_runs([run_id])
        with self._lock:
            rows = self._conn.execute(
                "SELECT DISTINCT plan_index FROM measurements WHERE run_id = ? AND plan_index IS NOT NULL"
                " AND (status = 'ok' OR transient = 0)", (run_id,)).fetchall()
        return {int(row[0]) for row in rows}

    def plan_outcomes(self, run_id: str) -> dict[int, MeasurementRecord]:
        """Plan position -> its latest record in ``run_id`` (without samples): the position's outcome. Earlier
        records of a position are attempts that failed and were tried again (see :mod:`farmbench.farm`)."""
        self._check_runs([run_id])
        columns = ", ".join(f"NULL AS {c}" if c in ("samples", "power_samples") else f"m.{c}"
                            for c in self._measurement_columns)
        with self._lock:
            rows = self._conn.execute(
                f"SELECT {columns} FROM measurements m JOIN (SELECT plan_index, MAX(id) AS last_id FROM measurements"
                " WHERE run_id = ? AND plan_index IS NOT NULL GROUP BY plan_index) latest ON m.id = latest.last_id",
                (run_id,)).fetchall()
        return {int(row["plan_index"]): MeasurementRecord.from_row(row, with_samples=False) for row in rows}

    # -- analysis and export -------------------------------------------------------------------------------------

    def frame(self, run_ids: Sequence[str] | None = None) -> pd.DataFrame:
        """One row per measurement, columns as in ``FRAME_COLUMNS``. Spec fields (family, width, resolution, quant,
        format) come from the artifact manifest's ``spec``; ``flags`` is a comma-separated string of the runner's
        flags and the statistics warnings; ``cv`` is a ratio (0.12 = 12%)."""
        import pandas as pd

        records = self._select_measurements(run_ids, with_samples=False)
        devices = {device.id: device for device in self.devices()}
        with self._lock:
            artifacts = {row["key"]: row for row in self._conn.execute("SELECT * FROM artifacts")}
        rows = []
        for record in records:
            device = devices[record.device_id]
            artifact = artifacts[record.artifact_key]
            spec = json.loads(artifact["manifest_json"]).get("spec") or {}
            latency = record.latency.to_json() if record.latency else {}
            rows.append({
                "run_id": record.run_id, "device": device.name, "device_identity": device.identity,
                "artifact": artifact["name"], **{f: spec.get(f) for f in _SPEC_FIELDS},
                "format": spec.get("format") or artifact["format"], "runtime": record.runtime,
                "runtime_version": record.runtime_version, "threads": record.config.get("threads"),
                "delegate": record.config.get("delegate") or "cpu", "xnnpack": record.config.get("xnnpack"),
                "status": record.status, **{f: latency.get(f) for f in _LATENCY_FIELDS},
                "n_samples": latency.get("n"), "init_ms": record.init_ms, "peak_rss_mb": record.peak_rss_mb,
                **{f: (record.power or {}).get(f) for f in _POWER_FIELDS},
                **{f: (record.thermal or {}).get(f) for f in _THERMAL_FIELDS},
                **{f: (record.drift or {}).get(f) for f in _DRIFT_FIELDS},
                "flags": ",".join(record.all_flags()), "error_class": record.error_class,
                "error_message": record.error_message, "measurement_id": record.id,
                "artifact_key": record.artifact_key, "artifact_sha256": record.artifact_sha256,
                "plan_index": record.plan_index, "repeat": record.repeat,
                "first_inference_ms": record.first_inference_ms, "transient": record.transient,
                "started_at": record.started_at, "finished_at": record.finished_at,
            })
        frame = pd.DataFrame.from_records(rows, columns=list(FRAME_COLUMNS))
        return frame.astype({name: dtype for name, dtype in FRAME_COLUMNS.items() if dtype is not None})

    def export(self, path: str | Path, format: str, run_ids: Sequence[str] | None = None) -> Path:
        """Write :meth:`frame` to ``path`` as csv, parquet or json, replacing the file atomically.

        Every export carries the schema version: a leading ``schema_version`` column in csv and parquet; in json,
        a document ``{"schema_version", "exported_at", "runs": [run without its plan], "measurements": [rows]}``
        (floats in json keep 15 significant digits).
        """
        if format not in EXPORT_FORMATS:
            raise UsageError(f"unknown export format {format!r}", hint=f"choose from {', '.join(EXPORT_FORMATS)}")
        target = Path(path)
        frame = self.frame(run_ids)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.partial")
        try:
            if format == "json":
                runs = [{k: v for k, v in run.to_json().items() if k != "plan"}
                        for run in self.runs() if run_ids is None or run.id in run_ids]
                document = {"schema_version": SCHEMA_VERSION, "exported_at": utc_now(), "runs": runs,
                            "measurements": json.loads(frame.to_json(orient="records", double_precision=15))}
                partial.write_text(json.dumps(document, indent=1))
            else:
                frame.insert(0, "schema_version", SCHEMA_VERSION)
                if format == "csv":
                    frame.to_csv(partial, index=False)
                else:
                    frame.to_parquet(partial, index=False)
            partial.replace(target)
        finally:
            partial.unlink(missing_ok=True)
        return target
