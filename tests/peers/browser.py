"""A real headless Chromium driven over the DevTools protocol (CDP), for testing report pages as a user's browser
renders them.

``chromium --headless=new --remote-debugging-port=0`` picks a free port and prints its browser websocket URL on
stderr; a small synchronous client (websocket-client) opens one page target with a flattened session and collects,
while the page loads and runs: console errors, uncaught exceptions, log entries of level error (CSP violations land
there), JavaScript dialogs (alert/confirm/prompt: dismissed and recorded) and every network request's URL.

When Chromium or websocket-client is missing the test skips, except with CI=true, where it fails (.ci/setup
installs Debian's ``chromium``; ``pip install -e '.[test]'`` installs websocket-client).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

STARTUP_TIMEOUT_S = 30.0
COMMAND_TIMEOUT_S = 60.0
_DEVTOOLS_URL = re.compile(r"DevTools listening on (ws://\S+)")


def require_chromium() -> str:
    """Chromium's path; skip without it (or without websocket-client), fail when CI=true."""
    missing = []
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        missing.append("chromium is not installed (Debian: apt-get install chromium)")
    try:
        import websocket  # noqa: F401
    except ImportError:
        missing.append("python module websocket-client is not installed (pip install -e '.[test]')")
    if missing:
        message = "; ".join(missing)
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{message}; CI=true: a missing browser is a failure")
        pytest.skip(message)
    assert found is not None
    return found


@dataclass
class PageLog:
    """What the page did that a test may object to."""

    console_errors: list[str] = field(default_factory=list)
    exceptions: list[str] = field(default_factory=list)
    log_errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        return [*self.console_errors, *self.exceptions, *self.log_errors, *(f"dialog: {d}" for d in self.dialogs)]


class CdpPage:
    """One page target over a flattened CDP session."""

    def __init__(self, ws: Any, session_id: str) -> None:
        self._ws = ws
        self._session = session_id
        self._next_id = 0
        self._events: list[dict[str, Any]] = []
        self.log = PageLog()
        self._lock = threading.Lock()

    def send(self, method: str, params: dict[str, Any] | None = None, *, session: bool = True,
             timeout_s: float = COMMAND_TIMEOUT_S) -> dict[str, Any]:
        with self._lock:
            self._next_id += 1
            message_id = self._next_id
            message: dict[str, Any] = {"id": message_id, "method": method, "params": params or {}}
            if session:
                message["sessionId"] = self._session
            self._ws.send(json.dumps(message))
            deadline = time.monotonic() + timeout_s
            while True:
                reply = self._receive(deadline, method)
                if reply.get("id") == message_id:
                    if "error" in reply:
                        raise RuntimeError(f"CDP {method} failed: {reply['error']}")
                    return dict(reply.get("result") or {})
                self._handle_event(reply)

    def _receive(self, deadline: float, waiting_for: str) -> dict[str, Any]:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no CDP answer to {waiting_for}")
        self._ws.settimeout(remaining)
        return dict(json.loads(self._ws.recv()))

    def _handle_event(self, event: dict[str, Any]) -> None:
        method = event.get("method", "")
        params = event.get("params") or {}
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            self.log.console_errors.append(" ".join(str(a.get("value", a.get("description", "")))
                                                    for a in params.get("args", [])))
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            self.log.exceptions.append(str(details.get("exception", {}).get("description") or details.get("text")))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            self.log.log_errors.append(f"{entry.get('source')}: {entry.get('text')} ({entry.get('url', '')})")
        elif method == "Page.javascriptDialogOpening":
            self.log.dialogs.append(f"{params.get('type')}: {params.get('message')}")
            # Answered from a thread: we are inside send()'s loop, and the dialog blocks the page until answered.
            threading.Thread(target=self._dismiss, daemon=True).start()
        elif method == "Network.requestWillBeSent":
            self.log.requests.append(str(params.get("request", {}).get("url")))
        self._events.append(event)

    def _dismiss(self) -> None:
        message = {"id": 10**9 + len(self.log.dialogs), "method": "Page.handleJavaScriptDialog",
                   "params": {"accept": False}, "sessionId": self._session}
        self._ws.send(json.dumps(message))

    def pump(self, seconds: float) -> None:
        """Read events for ``seconds`` (a round trip through a no-op command each time)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.evaluate("1")
            time.sleep(0.05)

    def navigate(self, url: str, *, timeout_s: float = COMMAND_TIMEOUT_S) -> None:
        self._events.clear()
        self.send("Page.navigate", {"url": url})
        deadline = time.monotonic() + timeout_s
        while not any(e.get("method") == "Page.loadEventFired" for e in self._events):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not finish loading within {timeout_s:g} s")
            self.evaluate("1")
            time.sleep(0.05)

    def evaluate(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"evaluating {expression!r} threw: {result['exceptionDetails']}")
        return result.get("result", {}).get("value")

    def wait_for(self, expression: str, *, timeout_s: float = COMMAND_TIMEOUT_S) -> Any:
        """Poll ``expression`` until it is truthy; its value."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"{expression!r} still falsy after {timeout_s:g} s")
            time.sleep(0.1)

    def screenshot(self, path: Path, *, max_height_px: int = 20000) -> Path:
        """A PNG of the whole page (up to ``max_height_px`` tall) at ``path``."""
        metrics = self.send("Page.getLayoutMetrics")
        size = metrics.get("cssContentSize") or metrics["contentSize"]
        width, height = int(size["width"]), min(int(size["height"]), max_height_px)
        shot = self.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True,
                                                    "clip": {"x": 0, "y": 0, "width": width, "height": height,
                                                             "scale": 1}}, timeout_s=120.0)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))
        return path


@contextmanager
def chromium_page(chromium: str, *, width_px: int = 1400, height_px: int = 1000) -> Iterator[CdpPage]:
    """A headless Chromium with one page, its Runtime, Log, Page and Network domains enabled."""
    import websocket

    with tempfile.TemporaryDirectory(prefix="fb-chromium-") as profile:
        process = subprocess.Popen(
            [chromium, "--headless=new", "--remote-debugging-port=0", f"--user-data-dir={profile}",
             "--no-sandbox",  # tests run as root in CI containers, where the sandbox cannot start
             "--disable-gpu", "--no-first-run", "--no-default-browser-check", "--disable-extensions",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--window-size={width_px},{height_px}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            url = _devtools_url(process)
            # No Origin header: Chromium refuses websocket clients with an origin it was not told to allow.
            ws = websocket.create_connection(url, timeout=COMMAND_TIMEOUT_S, suppress_origin=True,
                                             enable_multithread=True)
            try:
                browser = CdpPage(ws, "")
                target = browser.send("Target.createTarget", {"url": "about:blank"}, session=False)
                attached = browser.send("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True},
                                        session=False)
                page = CdpPage(ws, attached["sessionId"])
                for domain in ("Page", "Runtime", "Log", "Network"):
                    page.send(f"{domain}.enable")
                page.send("Emulation.setDeviceMetricsOverride", {"width": width_px, "height": height_px,
                                                                 "deviceScaleFactor": 1, "mobile": False})
                yield page
            finally:
                ws.close()
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _devtools_url(process: subprocess.Popen[str]) -> str:
    """Read Chromium's stderr until it prints its DevTools websocket URL."""
    assert process.stderr is not None
    lines: list[str] = []
    found: list[str] = []

    def read() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            lines.append(line)
            match = _DEVTOOLS_URL.search(line)
            if match and not found:
                found.append(match.group(1))
        # Keep draining after the URL so Chromium never blocks on a full stderr pipe.

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not found:
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("chromium did not print its DevTools URL:\n" + "".join(lines[-30:]))
        time.sleep(0.05)
    return found[0]
