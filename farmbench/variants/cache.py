"""The content-addressed artifact cache.

Layout under the cache root (``FARMBENCH_CACHE_DIR``, else ``$XDG_CACHE_HOME/farmbench``, else
``~/.cache/farmbench``)::

    artifacts/<key>/model.tflite | model.onnx
    artifacts/<key>/manifest.json        written last: an entry without it does not exist
    weights/<key>.weights.h5             trained random weights, per group
    logs/<group key>.log                 everything the converters printed
    locks/<group key>.lock               held while a group builds, so concurrent builds wait instead of redoing

An artifact's key hashes everything that changes its bytes (see ``build.artifact_key``). Entries are written into a
temporary directory beside their final place and renamed into it, so a reader never sees half an entry and two
builders of the same key cannot corrupt each other: the second rename loses and its copy is discarded.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from farmbench.errors import CacheError

MANIFEST_NAME = "manifest.json"
MANIFEST_SCHEMA_VERSION = 1


def default_cache_dir() -> Path:
    explicit = os.environ.get("FARMBENCH_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "farmbench"


@dataclass(frozen=True)
class CacheEntry:
    key: str
    directory: Path
    manifest: dict[str, Any]

    @property
    def model_path(self) -> Path:
        return self.directory / str(self.manifest["file"])

    @property
    def size_bytes(self) -> int:
        return int(self.manifest.get("size_bytes", 0))

    def last_used_s(self) -> float:
        """Epoch seconds of the last build or cache hit (the manifest's mtime is touched on every hit)."""
        return (self.directory / MANIFEST_NAME).stat().st_mtime


class ArtifactCache:
    def __init__(self, root: Path | None = None) -> None:
        self.root = (root or default_cache_dir()).expanduser()

    @property
    def artifacts_dir(self) -> Path:
        return self.root / "artifacts"

    def weights_path(self, weights_key: str) -> Path:
        return self.root / "weights" / f"{weights_key}.weights.h5"

    def log_path(self, group_key: str) -> Path:
        return self.root / "logs" / f"{group_key}.log"

    def get(self, key: str, *, touch: bool = True) -> CacheEntry | None:
        directory = self.artifacts_dir / key
        manifest_path = directory / MANIFEST_NAME
        try:
            manifest = json.loads(manifest_path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise CacheError(
                f"cache entry {directory} is unreadable: {exc}",
                hint=f"remove it (farmbench cache prune --key {key}) or rebuild with --force",
            ) from exc
        version = manifest.get("schema_version")
        if version != MANIFEST_SCHEMA_VERSION:
            # Older manifests are rebuilt rather than migrated: the artifact bytes may differ too.
            return None
        if touch:
            with contextlib.suppress(OSError):
                os.utime(manifest_path)
        return CacheEntry(key, directory, manifest)

    def staging_dir(self, key: str) -> Path:
        """A fresh private directory to write an entry into before :meth:`commit`."""
        self.artifacts_dir.mkdir(parents=True, exist_ok=True)
        path = self.artifacts_dir / f".tmp-{key[:16]}-{os.getpid()}-{time.monotonic_ns()}"
        path.mkdir()
        return path

    def commit(self, key: str, staging: Path, manifest: dict[str, Any], *, replace: bool = False) -> CacheEntry:
        """Write the manifest into ``staging`` and move it to its final place atomically.

        If another builder committed the same key first, keep theirs (same key, same content) and drop ours --
        unless ``replace`` (a ``--force`` rebuild), which moves the existing entry aside and puts ours in its place.
        """
        manifest = {**manifest, "schema_version": MANIFEST_SCHEMA_VERSION, "key": key}
        (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        final = self.artifacts_dir / key
        if final.exists() and not (final / MANIFEST_NAME).exists():
            # A leftover from an interrupted build of an older farmbench: entries without a manifest are void.
            shutil.rmtree(final, ignore_errors=True)
        if replace and final.exists():
            # Renamed, not deleted in place: a reader sees the old entry or none, never half of one.
            old = self.artifacts_dir / f".tmp-old-{key[:16]}-{os.getpid()}-{time.monotonic_ns()}"
            with contextlib.suppress(FileNotFoundError):
                os.rename(final, old)
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.rename(staging, final)
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
            existing = self.get(key)
            if existing is None:
                raise CacheError(f"could not move a built artifact into {final}") from None
            return existing
        return CacheEntry(key, final, manifest)

    def discard(self, staging: Path) -> None:
        shutil.rmtree(staging, ignore_errors=True)

    @contextlib.contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """An exclusive advisory lock (flock) held for the duration of a group build."""
        lock_dir = self.root / "locks"
        lock_dir.mkdir(parents=True, exist_ok=True)
        with open(lock_dir / f"{name}.lock", "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def entries(self) -> list[CacheEntry]:
        if not self.artifacts_dir.exists():
            return []
        out = []
        for directory in sorted(self.artifacts_dir.iterdir()):
            if directory.name.startswith(".") or not directory.is_dir():
                continue
            entry = self.get(directory.name, touch=False)
            if entry is not None:
                out.append(entry)
        return out

    def prune(
        self,
        *,
        older_than_s: float | None = None,
        max_total_bytes: int | None = None,
        keys: tuple[str, ...] = (),
        everything: bool = False,
        dry_run: bool = False,
        now_s: float | None = None,
    ) -> list[CacheEntry]:
        """Remove entries: all, by key prefix, unused for longer than ``older_than_s``, and then the least recently
        used ones until the total is under ``max_total_bytes``. Stale staging directories (over a day old) go too.
        Returns what was (or, with ``dry_run``, would be) removed."""
        now_s = time.time() if now_s is None else now_s
        entries = sorted(self.entries(), key=lambda e: e.last_used_s())
        doomed: list[CacheEntry] = []
        for entry in entries:
            if everything or any(entry.key.startswith(k) for k in keys) or older_than_s is not None and now_s - entry.last_used_s() > older_than_s:
                doomed.append(entry)
        if max_total_bytes is not None:
            kept = [e for e in entries if e not in doomed]
            total = sum(e.size_bytes for e in kept)
            for entry in kept:  # least recently used first
                if total <= max_total_bytes:
                    break
                doomed.append(entry)
                total -= entry.size_bytes
        if not dry_run:
            for entry in doomed:
                shutil.rmtree(entry.directory, ignore_errors=True)
            if self.artifacts_dir.exists():
                for stale in self.artifacts_dir.glob(".tmp-*"):
                    with contextlib.suppress(OSError):
                        if now_s - stale.stat().st_mtime > 86400:
                            shutil.rmtree(stale, ignore_errors=True)
        return doomed
