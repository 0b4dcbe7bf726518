"""Driving a farm of flaky devices: one worker per device, retries with backoff, a health rule, and stopping on
SIGINT/SIGTERM. What one measurement *is* (sessions, runners, records) lives in :mod:`farmbench.orchestrator`; this
module is the policy around it, kept apart so the rules below can be read in one place.

Retries. A measurement attempt fails *transiently* when its error says retrying may help (``transient`` on the
exception, carried into the record): a connection refused, reset or lost, a device that went offline, a command or
transfer past its timeout. Then the worker closes the device's connection, waits ``backoff_s`` (doubled after each
further failure of the same measurement, at most ``backoff_max_s``), reconnects -- killing whatever the lost
connection left running on the device -- and tries again, up to ``retries`` more times. Permanent failures (a model
the runtime cannot run, an unknown host key, a refused key, a full disk, a corrupt artifact, a bad configuration)
are not retried. Every failed attempt is stored as a record (``transient`` true, ``context.attempt``; flag
``retried`` when another attempt followed), so the database shows how often a device dropped; the latest record of
a plan position is its outcome.

Health. A device whose last ``unhealthy_after`` measurements each failed transiently, retries included, is marked
unhealthy: its remaining measurements are stored as ``skipped`` with error class ``device_unhealthy``, ``transient``
true and the reason, and the summary lists them as not run. A measurement that succeeds, is skipped, or fails for a
permanent reason shows the device answering, and resets the count. A permanent failure while connecting (host key,
authentication, a missing binary) makes the device unusable: every remaining measurement fails with that error.

Stopping. The first SIGINT or SIGTERM stops new work: each device's transport is cancelled, which kills the command
in flight on the device (its whole process tree) and removes partial uploads; measurements cut short are not stored
(a resume runs them), finished ones are already committed. The run is marked interrupted and farmbench exits 130.
A second signal stops waiting for that clean-up: the run is marked interrupted at once and farmbench exits 130,
leaving a command on a device to its own timeout. A third exits immediately.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Generic, Protocol, TypeVar

from farmbench.config import RunConfig
from farmbench.errors import EXIT_INTERRUPTED, FarmbenchError, Interrupted
from farmbench.results.schema import MeasurementRecord
from farmbench.transports.base import Orphan, Transport

NOT_RUN_CLASS = "device_unhealthy"
"""error_class of the records standing in for measurements an unhealthy device did not run."""
FLAG_RETRIED = "retried"
"""Flag of a failed attempt after which the measurement was tried again."""

HEALTHY, UNHEALTHY, UNUSABLE, INTERRUPTED = "healthy", "unhealthy", "unusable", "interrupted"


@dataclass(frozen=True)
class RetryPolicy:
    """The [run] keys ``retries``, ``unhealthy_after`` (0: never), ``backoff_s`` and ``backoff_max_s``."""

    retries: int = 2
    unhealthy_after: int = 3
    backoff_s: float = 1.0
    backoff_max_s: float = 30.0

    @classmethod
    def from_run(cls, run: RunConfig) -> RetryPolicy:
        return cls(retries=run.retries, unhealthy_after=run.unhealthy_after, backoff_s=run.backoff_s,
                   backoff_max_s=run.backoff_max_s)

    def delay_s(self, retry: int) -> float:
        """The wait before retry number ``retry`` (1 = the first): backoff_s, doubled each time, capped."""
        return float(min(self.backoff_max_s, self.backoff_s * 2 ** max(0, retry - 1)))


class StopController:
    """What the run's threads share to stop: ``stop`` (no new work; transports cancelled), ``abort`` (stop waiting),
    and the transports in use, so a stop can cancel them. Signal handlers only set flags; the thread waiting for
    the workers (:meth:`wait_workers`) does the cancelling."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.abort = threading.Event()
        self.reason: str | None = None
        self._lock = threading.Lock()
        self._transports: set[Transport] = set()
        self._cancelled = False

    @property
    def stopping(self) -> bool:
        return self.stop.is_set()

    def request_stop(self, reason: str) -> None:
        with self._lock:
            if self.reason is None:
                self.reason = reason
        self.stop.set()

    def register(self, transport: Transport) -> None:
        """Track a device's transport; cancelled at once when the run is already stopping."""
        with self._lock:
            self._transports.add(transport)
            cancel_now = self._cancelled
        if cancel_now:
            _cancel_in_background(transport)

    def unregister(self, transport: Transport) -> None:
        with self._lock:
            self._transports.discard(transport)

    def cancel_all(self) -> None:
        """Cancel every registered transport, each from its own thread (an ADB cancel opens a connection)."""
        with self._lock:
            self._cancelled = True
            transports = list(self._transports)
        for transport in transports:
            _cancel_in_background(transport)

    def sleep(self, seconds: float) -> bool:
        """Wait ``seconds`` unless stopping; True when the wait was cut short by a stop."""
        return self.stop.wait(max(0.0, seconds))

    def wait_workers(self, threads: Sequence[threading.Thread], *, on_stop: Callable[[], None],
                     poll_s: float = 0.2) -> bool:
        """Join the device threads; on a stop, cancel the transports once and call ``on_stop``. Returns False when
        an abort (a second signal) ended the wait with workers still running."""
        cancelled = False
        while any(thread.is_alive() for thread in threads):
            if self.stop.is_set() and not cancelled:
                cancelled = True
                on_stop()
                self.cancel_all()
            if self.abort.is_set():
                return False
            for thread in threads:
                thread.join(timeout=poll_s / max(1, len(threads)))
        return True

    @contextlib.contextmanager
    def signals(self) -> Iterator[None]:
        """SIGINT and SIGTERM request a stop; a second one an abort; a third exits at once (130). Only in the main
        thread (Python delivers signals there); elsewhere this does nothing."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        count = 0

        def handle(signum: int, _frame: Any) -> None:
            nonlocal count
            count += 1
            name = signal.Signals(signum).name
            if count == 1:
                self.request_stop(name)
            elif count == 2:
                self.abort.set()
            else:
                os._exit(EXIT_INTERRUPTED)

        previous = {signum: signal.signal(signum, handle) for signum in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


def _cancel_in_background(transport: Transport) -> None:
    threading.Thread(target=_cancel_quietly, args=(transport,), daemon=True, name="cancel").start()


def _cancel_quietly(transport: Transport) -> None:
    with contextlib.suppress(Exception):  # stopping goes on whatever one device does
        transport.cancel()


@dataclass
class DeviceReport:
    """One device's part of a run, for the summary: outcomes of its measurements in this invocation (final ones;
    ``retried`` counts failed attempts that were tried again), its health and why, and ``busy_s``, the time spent
    inside measurements (connecting and probing excluded)."""

    name: str
    planned: int = 0
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    not_run: int = 0
    retried: int = 0
    connects: int = 0
    busy_s: float = 0.0
    health: str = HEALTHY
    reason: str | None = None
    last_error: str | None = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["busy_s"] = round(self.busy_s, 3)
        return data


class Session(Protocol):
    @property
    def transport(self) -> Transport: ...

    def close(self) -> None: ...


SessionT = TypeVar("SessionT", bound=Session)
ItemT = TypeVar("ItemT")  # a plan item


@dataclass
class DeviceWork(Generic[SessionT, ItemT]):
    """What a :class:`DeviceWorker` needs from the orchestrator for one device.

    ``connect(attempt, orphans)`` opens a session, kills ``orphans`` (what a lost connection left running) before
    anything else runs there, and prepares it (raises FarmbenchError); ``measure(session, item, attempt)``
    takes one measurement and returns its record (ok, failed or skipped; it may raise FarmbenchError too);
    ``failed(item, error, attempt)`` and ``not_run(item, reason)`` build records for failures outside ``measure``
    and for measurements an unhealthy device will not run; ``commit(item, record)`` stores a record (one
    transaction: it survives anything that happens after) and reports it; ``label(item)`` names an item in
    messages and events."""

    name: str
    items: Sequence[ItemT]
    connect: Callable[[int, Sequence[Orphan]], SessionT]
    measure: Callable[[SessionT, ItemT, int], MeasurementRecord]
    failed: Callable[[ItemT, FarmbenchError, int], MeasurementRecord]
    not_run: Callable[[ItemT, str], MeasurementRecord]
    commit: Callable[[ItemT, MeasurementRecord], None]
    label: Callable[[ItemT], str]
    notify: Callable[[dict[str, Any]], None] = field(default=lambda event: None)


class DeviceWorker(Generic[SessionT, ItemT]):
    """Runs one device's measurements in order, one at a time, under the retry and health rules (module doc)."""

    def __init__(self, work: DeviceWork[SessionT, ItemT], policy: RetryPolicy, stop: StopController) -> None:
        self.work = work
        self.policy = policy
        self.stop = stop
        self.report = DeviceReport(work.name, planned=len(work.items))
        self._session: SessionT | None = None
        self._orphans: list[Orphan] = []
        self._consecutive = 0
        self._unusable: FarmbenchError | None = None

    def run(self) -> DeviceReport:
        try:
            self._run()
        finally:
            self._drop_session()
        return self.report

    def _run(self) -> None:
        work, report = self.work, self.report
        items = list(work.items)
        for position, item in enumerate(items):
            if self.stop.stopping:
                report.health = INTERRUPTED
                return
            if self._unusable is not None:
                self._commit(item, work.failed(item, self._unusable, 1))
                report.failed += 1
                continue
            limit = self.policy.unhealthy_after
            if limit and self._consecutive >= limit:
                self._mark_unhealthy(items[position:])
                return
            if not self._measure_with_retries(item):
                report.health = INTERRUPTED
                return

    def _measure_with_retries(self, item: ItemT) -> bool:
        """One plan item, retried while it fails transiently. False when a stop cut it short (nothing stored for
        the attempt in flight)."""
        work, report = self.work, self.report
        attempt = 0
        while True:
            attempt += 1
            record, connect_error = self._attempt(item, attempt)
            if record is None:
                return False
            if self.stop.stopping and record.status != "ok":
                return False  # most likely the stop's own doing (a killed command): not a result
            transient_failure = record.status == "failed" and record.transient
            retry = transient_failure and attempt <= self.policy.retries
            if retry:
                record = replace(record, flags=[*record.flags, FLAG_RETRIED])
            self._commit(item, record)
            if transient_failure:
                report.last_error = f"{record.error_class}: {(record.error_message or '').splitlines()[0][:200]}"
                self._drop_session()
            if connect_error is not None and not getattr(connect_error, "transient", False):
                # The device cannot be used at all (host key, key refused, a binary missing): no point connecting
                # again for each measurement.
                self._unusable = connect_error
                report.health = UNUSABLE
                report.reason = report.last_error = f"{type(connect_error).__name__}: {connect_error}"
            if retry:
                report.retried += 1
                delay_s = self.policy.delay_s(attempt)
                work.notify({"event": "retry", "device": work.name, "artifact": work.label(item),
                             "attempt": attempt, "retries": self.policy.retries, "delay_s": delay_s,
                             "error": report.last_error})
                if self.stop.sleep(delay_s):
                    return False
                continue
            self._count(record, transient_failure)
            return True

    def _attempt(self, item: ItemT, attempt: int) -> tuple[MeasurementRecord | None, FarmbenchError | None]:
        """(the attempt's record, the error when connecting failed); (None, None) when interrupted."""
        work = self.work
        if self._session is None:
            try:
                self._session = self._connect(attempt)
            except Interrupted:
                return None, None
            except FarmbenchError as exc:
                return work.failed(item, exc, attempt), exc
        work.notify({"event": "measuring", "device": work.name, "artifact": work.label(item), "attempt": attempt})
        started_s = time.monotonic()
        try:
            return work.measure(self._session, item, attempt), None
        except Interrupted:
            return None, None
        except FarmbenchError as exc:
            return work.failed(item, exc, attempt), None
        finally:
            self.report.busy_s += time.monotonic() - started_s

    def _connect(self, attempt: int) -> SessionT:
        work = self.work
        self.report.connects += 1
        work.notify({"event": "device-connect", "device": work.name, "attempt": attempt})
        # What a lost connection left running (a benchmark still going) would compete with the probe and the next
        # measurement for the CPU: connect() kills it first.
        orphans = list(self._orphans)
        session = work.connect(attempt, orphans)
        self._orphans = [orphan for orphan in self._orphans if orphan not in orphans]
        self.stop.register(session.transport)
        if orphans:
            work.notify({"event": "reaped", "device": work.name, "count": len(orphans)})
        return session

    def _drop_session(self) -> None:
        session, self._session = self._session, None
        if session is None:
            return
        self.stop.unregister(session.transport)
        self._orphans += session.transport.orphans
        with contextlib.suppress(Exception):  # a dead connection may fail to close; it is being dropped
            session.close()

    def _commit(self, item: ItemT, record: MeasurementRecord) -> None:
        self.work.commit(item, record)

    def _count(self, record: MeasurementRecord, transient_failure: bool) -> None:
        report = self.report
        if record.status == "ok":
            report.ok += 1
        elif record.status == "skipped":
            report.skipped += 1
        else:
            report.failed += 1
        # Only a device that keeps dropping is unhealthy: a model it cannot run says nothing about the device.
        self._consecutive = self._consecutive + 1 if transient_failure else 0

    def _mark_unhealthy(self, rest: Sequence[ItemT]) -> None:
        work, report = self.work, self.report
        limit = self.policy.unhealthy_after
        reason = (f"{work.name} was marked unhealthy after {limit} measurement{'s' if limit != 1 else ''} in a row"
                  f" failed ({1 + self.policy.retries} attempt{'s' if self.policy.retries else ''} each); last:"
                  f" {report.last_error}")
        report.health, report.reason = UNHEALTHY, reason
        work.notify({"event": "device-unhealthy", "device": work.name, "reason": reason, "not_run": len(rest)})
        for item in rest:
            if self.stop.stopping:
                return
            self._commit(item, work.not_run(item, reason))
            report.not_run += 1


def run_workers(workers: Sequence[DeviceWorker[Any, Any]], stop: StopController,
                on_stop: Callable[[], None]) -> bool:
    """Each worker in its own thread (daemon: an abort must not wait for a device that hangs); False when an abort
    left some still running."""
    errors: list[BaseException] = []

    def target(worker: DeviceWorker[Any, Any]) -> None:
        try:
            worker.run()
        except BaseException as exc:  # noqa: BLE001  re-raised in the waiting thread
            errors.append(exc)
            stop.request_stop(f"error on {worker.work.name}: {type(exc).__name__}")

    threads = [threading.Thread(target=target, args=(worker,), daemon=True, name=f"device-{worker.work.name}")
               for worker in workers]
    for thread in threads:
        thread.start()
    finished = stop.wait_workers(threads, on_stop=on_stop)
    if errors:
        raise errors[0]
    return finished


__all__ = ["FLAG_RETRIED", "NOT_RUN_CLASS", "DeviceReport", "DeviceWork", "DeviceWorker", "RetryPolicy",
           "StopController", "run_workers"]
