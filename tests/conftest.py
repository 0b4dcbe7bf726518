"""Shared helpers: run the real CLI in a subprocess, require optional tools (a failure, not a skip, in CI), and
build the one real model grid the slow tests share."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

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
    # `farmbench run` writes an HTML report under the working directory (the repository, for most tests): only the
    # report tests ask for one (tests/test_report.py passes --report and sets this back to true).
    env["FARMBENCH_RUN_REPORT"] = "false"
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


# The model grid the slow tests share: mobilenet_v2 a0.35 r96 with seeded random weights, every quantisation mode
# and format. Training its weights takes minutes, so it is built once per test session (see built_grid).
GRID_FAMILY, GRID_WIDTH, GRID_RESOLUTION = "mobilenet_v2", 0.35, 96
GRID_FLAGS = ("--family", GRID_FAMILY, "--width", str(GRID_WIDTH), "--resolution", str(GRID_RESOLUTION))
GRID_PREFIX = "mobilenet_v2_a0.35_r96"


@dataclass(frozen=True)
class BuiltGrid:
    """The shared grid, built with jobs=1 into ``cache_dir``. test_build.py works in ``cache_dir`` and changes it
    (forced rebuilds, pruning); everyone else takes a :meth:`copy` of ``pristine_dir``, a snapshot made right after
    the build, so no test sees another's changes whatever the order they run in."""

    cache_dir: Path
    pristine_dir: Path
    variants: list[Any]  # farmbench.variants.spec.Variant
    results: list[Any]  # farmbench.variants.build.BuildResult, in the order of variants
    events: list[dict[str, Any]]
    seconds: float

    def copy(self, destination: Path) -> Path:
        """A private cache holding every artifact of the grid (and its trained weights) at ``destination``."""
        shutil.copytree(self.pristine_dir, destination, ignore=shutil.ignore_patterns("locks"))
        return destination


@pytest.fixture(scope="session")
def built_grid(tmp_path_factory: pytest.TempPathFactory) -> BuiltGrid:
    require_module("tensorflow")
    from farmbench.variants.build import BuildOptions, build_variants
    from farmbench.variants.cache import ArtifactCache
    from farmbench.variants.spec import FORMATS, QUANT_MODES, Weights, expand_grid

    cache_dir = tmp_path_factory.mktemp("build-cache")
    variants = expand_grid([GRID_FAMILY], [GRID_WIDTH], [GRID_RESOLUTION], list(QUANT_MODES), list(FORMATS),
                           Weights("random"))
    events: list[dict[str, Any]] = []
    started = time.monotonic()
    results = build_variants(variants, BuildOptions(cache=ArtifactCache(cache_dir), jobs=1, on_event=events.append))
    seconds = time.monotonic() - started
    pristine_dir = tmp_path_factory.mktemp("build-cache-pristine") / "cache"
    shutil.copytree(cache_dir, pristine_dir, ignore=shutil.ignore_patterns("locks"))
    return BuiltGrid(cache_dir, pristine_dir, variants, results, events, seconds)


pytest_plugins = ["tests.peers.sshd", "tests.peers.adb_emulator"]
