"""Shared helpers: run the real CLI in a subprocess, and require optional tools (a failure, not a skip, in CI)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import Mapping, Sequence

import pytest

REPO = Path(__file__).resolve().parents[1]

# A proxy on a port nothing listens on: any download the CLI tries fails at once with "connection refused",
# whether or not this machine has a network.
UNREACHABLE_PROXY = "http://127.0.0.1:9"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def require_module(name: str) -> None:
    """Skip when ``name`` is not importable here; when CI=true a missing module fails the test instead."""
    if importlib.util.find_spec(name) is None:
        message = f"python module {name!r} is not installed"
        if in_ci():
            pytest.fail(f"{message} (CI=true: a missing tool is a failure)")
        pytest.skip(message)


def cli_env(cache_dir: Path | None = None, extra: Mapping[str, str] | None = None,
            *, offline: bool = True) -> dict[str, str]:
    """The environment for a farmbench subprocess: no FARMBENCH_* settings from the caller's shell, the given
    cache directory, and (``offline``) every download pointed at an unreachable proxy."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARMBENCH_")}
    for name in ("no_proxy", "NO_PROXY"):
        env.pop(name, None)
    if offline:
        for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
            env[name] = UNREACHABLE_PROXY
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    if cache_dir is not None:
        env["FARMBENCH_CACHE_DIR"] = str(cache_dir)
    if extra:
        env.update(extra)
    return env


def cli_command(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "farmbench", *(str(a) for a in args)]


def run_cli(*args: str | Path, cache_dir: Path | None = None, env: Mapping[str, str] | None = None,
            cwd: Path | None = None, timeout: float = 120, offline: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``python -m farmbench ARGS`` as a real process and return its exit code, stdout and stderr."""
    return subprocess.run(cli_command(*args), env=cli_env(cache_dir, env, offline=offline), cwd=cwd or REPO,
                          capture_output=True, text=True, timeout=timeout)


def start_cli(*args: str | Path, cache_dir: Path | None = None, env: Mapping[str, str] | None = None
              ) -> subprocess.Popen[str]:
    return subprocess.Popen(cli_command(*args), env=cli_env(cache_dir, env), cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def describe(proc: subprocess.CompletedProcess[str] | Sequence[str]) -> str:
    """Text for assertion messages: the exit code and both streams."""
    if isinstance(proc, subprocess.CompletedProcess):
        return f"exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    return "\n".join(proc)


@pytest.fixture
def empty_cache(tmp_path: Path) -> Path:
    path = tmp_path / "cache"
    path.mkdir()
    return path


pytest_plugins = ["tests.peers.sshd"]
