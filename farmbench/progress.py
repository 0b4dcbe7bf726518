"""What `farmbench run` shows while it works, from the orchestrator's events (see :mod:`farmbench.orchestrator`).

* ``live`` (a terminal): one line per device (what it is doing, its bar, done/planned) under an overall bar with the
  elapsed time and an ETA, drawn with rich; failures, retries, devices given up and the stop are printed above it.
* ``plain`` (CI logs, pipes): one line per event, each stamped with the elapsed time and the overall count and ETA.
* ``none``: nothing (``--quiet``, ``--json``).

The ETA is the remaining measurements divided by the farm's rate so far (all devices together).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Self

import click

Event = dict[str, Any]


def _eta(done: int, total: int, elapsed_s: float) -> str:
    if done <= 0 or done >= total:
        return ""
    left_s = (total - done) * elapsed_s / done
    minutes, seconds = divmod(int(left_s + 0.5), 60)
    return f"ETA {minutes}:{seconds:02d}" if minutes else f"ETA {seconds}s"


def _detail(record: Any) -> str:
    if record.status == "ok" and record.samples_us:
        ordered = sorted(record.samples_us)
        return f" p50 {ordered[len(ordered) // 2] / 1000:.3f} ms, n={len(ordered)}"
    if record.status == "ok" and record.latency is not None and record.latency.p50_us is not None:
        return f" p50 {record.latency.p50_us / 1000:.3f} ms, n={record.latency.n}"
    if record.error_message:
        return f" {record.error_class}: {record.error_message.splitlines()[0][:160]}"
    return ""


class _Counter:
    """Final outcomes so far against the plan (shared by both displays)."""

    def __init__(self) -> None:
        self.started_s = time.monotonic()
        self.total = 0
        self.done = 0

    def elapsed_s(self) -> float:
        return time.monotonic() - self.started_s

    def feed(self, event: Event) -> None:
        kind = event.get("event")
        if kind == "run-start":
            self.total = int(event["planned"])
        elif kind == "measured" and event.get("final", True):
            self.done += 1


class PlainProgress:
    """One line per event on stderr."""

    def __init__(self) -> None:
        self.counter = _Counter()
        self._lock = threading.Lock()

    def _line(self, text: str) -> None:
        counter = self.counter
        eta = _eta(counter.done, counter.total, counter.elapsed_s())
        where = f"{counter.done}/{counter.total}{' ' + eta if eta else ''}" if counter.total else ""
        with self._lock:
            click.echo(f"[{counter.elapsed_s():6.1f}s {where}] {text}", err=True)

    def __call__(self, event: Event) -> None:
        self.counter.feed(event)
        kind = event.get("event")
        device = event.get("device")
        if kind == "run-start":
            devices = event["devices"]
            self._line(f"run {event['run_id']}: {event['planned']} measurements on {len(devices)} device"
                       f"{'s' if len(devices) != 1 else ''}")
        elif kind == "device-connect":
            attempt = int(event.get("attempt") or 1)
            self._line(f"{device}: {'connecting' if attempt == 1 else f'reconnecting (attempt {attempt})'}")
        elif kind == "device-ready":
            runtimes = ", ".join(f"{k} {v}" for k, v in event["runtimes"].items()) or "none"
            self._line(f"{device}: ready (runtimes: {runtimes})")
            if event.get("telemetry"):
                self._line(f"{device}: {event['telemetry']}")
        elif kind == "measured":
            record = event["record"]
            status = record.status if event.get("final", True) else "failed, will retry"
            self._line(f"{device}: {status} {event['artifact']} [{record.runtime} t{record.config.get('threads')}]"
                       f"{_detail(record)}")
        elif kind == "retry":
            self._line(f"{device}: retrying {event['artifact']} in {event['delay_s']:g} s (attempt"
                       f" {event['attempt'] + 1} of {event['retries'] + 1})")
        elif kind == "reaped":
            self._line(f"{device}: killed what the lost connection left running ({event['count']} command"
                       f"{'s' if event['count'] != 1 else ''})")
        elif kind == "device-unhealthy":
            self._line(f"{device}: unhealthy, {event['not_run']} measurements not run: {event['reason']}")
        elif kind == "stopping":
            self._line(f"stopping ({event.get('signal')}): no new measurements; the ones in flight are being ended"
                       " on their devices. Press Ctrl-C again to stop waiting for them.")


class LiveProgress:
    """rich: a line per device and an overall bar with ETA, redrawn in place on the terminal."""

    def __init__(self, console: Any = None) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.counter = _Counter()
        self.console = console or Console(stderr=True)
        self.progress = Progress(
            TextColumn("{task.description:<24}"), BarColumn(bar_width=24), MofNCompleteColumn(),
            TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[status]}"),
            console=self.console, transient=False, refresh_per_second=4)
        self._overall: Any = None
        self._tasks: dict[str, Any] = {}

    def __enter__(self) -> Self:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def _status(self, device: str, text: str, advance: int = 0) -> None:
        task = self._tasks.get(device)
        if task is not None:
            self.progress.update(task, status=text, advance=advance)

    def __call__(self, event: Event) -> None:
        self.counter.feed(event)
        kind = event.get("event")
        device = str(event.get("device") or "")
        progress = self.progress
        if kind == "run-start":
            self._overall = progress.add_task(f"run {event['run_id']}", total=event["planned"], status="")
            for name, count in event["devices"].items():
                self._tasks[name] = progress.add_task(f"  {name}", total=count, status="waiting")
        elif kind == "device-connect":
            attempt = int(event.get("attempt") or 1)
            self._status(device, "connecting" if attempt == 1 else f"reconnecting (attempt {attempt})")
        elif kind == "device-ready":
            self._status(device, "ready")
        elif kind == "measuring":
            attempt = int(event.get("attempt") or 1)
            self._status(device, f"{event['artifact']}{f' (attempt {attempt})' if attempt > 1 else ''}")
        elif kind == "measured":
            record = event["record"]
            final = event.get("final", True)
            self._status(device, f"{record.status} {event['artifact']}", advance=1 if final else 0)
            if final and self._overall is not None:
                progress.update(self._overall, advance=1)
            if record.status == "failed":
                when = "" if final else " (retrying)"
                progress.console.print(f"[red]{device}: failed{when}[/] {event['artifact']}{_detail(record)}",
                                       markup=True, highlight=False)
        elif kind == "retry":
            self._status(device, f"retrying in {event['delay_s']:g} s")
        elif kind == "device-unhealthy":
            self._status(device, "[red]unhealthy[/]", advance=int(event["not_run"]))
            if self._overall is not None:
                progress.update(self._overall, advance=int(event["not_run"]))
            progress.console.print(f"[red]{device}: unhealthy[/], {event['not_run']} not run: {event['reason']}",
                                   markup=True, highlight=False)
        elif kind == "stopping":
            progress.console.print(f"[yellow]stopping ({event.get('signal')})[/]: ending the measurements in flight;"
                                   " Ctrl-C again to stop waiting", markup=True, highlight=False)


def choose(mode: str) -> str:
    """``auto`` -> ``live`` on a terminal outside CI, else ``plain``."""
    if mode != "auto":
        return mode
    in_ci = os.environ.get("CI", "").lower() == "true"
    return "live" if sys.stderr.isatty() and not in_ci else "plain"


@contextlib.contextmanager
def run_progress(mode: str) -> Iterator[Callable[[Event], None]]:
    """The event callback for ``mode`` (auto, live, plain, none), live for the duration of the block."""
    chosen = choose(mode)
    if chosen == "none":
        yield lambda event: None
    elif chosen == "live":
        with LiveProgress() as live:
            yield live
    else:
        yield PlainProgress()


__all__ = ["LiveProgress", "PlainProgress", "choose", "run_progress"]
