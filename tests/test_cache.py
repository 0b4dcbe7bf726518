"""farmbench.variants.cache: atomic entries, concurrent commits, locks, pruning and where the cache lives.

No TensorFlow here: entries are made of small files written by the test, committed exactly as the build worker does.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from pathlib import Path
from typing import Any

import pytest

from farmbench.errors import CacheError
from farmbench.variants.cache import MANIFEST_NAME, ArtifactCache, default_cache_dir

KEY = "0123456789abcdef0123456789abcdef"


def make_entry(cache: ArtifactCache, key: str, size: int = 100, payload: bytes | None = None,
               **manifest: Any) -> Path:
    """Stage and commit an entry with a model file of ``size`` bytes; return its directory."""
    staging = cache.staging_dir(key)
    (staging / "model.tflite").write_bytes(payload if payload is not None else b"m" * size)
    entry = cache.commit(key, staging, {"file": "model.tflite", "size_bytes": size, "name": key, **manifest})
    return entry.directory


def set_last_used(cache: ArtifactCache, key: str, when: float) -> None:
    manifest = cache.artifacts_dir / key / MANIFEST_NAME
    os.utime(manifest, (when, when))


def leftovers(cache: ArtifactCache) -> list[str]:
    return sorted(p.name for p in cache.artifacts_dir.iterdir() if p.name.startswith("."))


# --- entries ----------------------------------------------------------------------------------------------------


def test_get_missing_key_is_none(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path)
    assert cache.get(KEY) is None
    assert cache.entries() == []


def test_entry_is_visible_only_after_commit(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path)
    staging = cache.staging_dir(KEY)
    (staging / "model.tflite").write_bytes(b"model bytes")
    (staging / MANIFEST_NAME).write_text("{}")  # even a manifest-looking file in staging is not an entry
    assert staging.parent == cache.artifacts_dir
    assert cache.get(KEY) is None
    assert cache.entries() == []

    entry = cache.commit(KEY, staging, {"file": "model.tflite", "size_bytes": 11, "name": "m"})
    assert not staging.exists()
    got = cache.get(KEY)
    assert got is not None
    assert got.directory == cache.artifacts_dir / KEY == entry.directory
    assert got.model_path.read_bytes() == b"model bytes"
    assert got.manifest["key"] == KEY and got.manifest["name"] == "m"
    assert got.size_bytes == 11
    assert [e.key for e in cache.entries()] == [KEY]
    assert leftovers(cache) == []


def test_second_commit_of_a_key_keeps_the_first(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path)
    make_entry(cache, KEY, payload=b"first", tag="first")
    staging = cache.staging_dir(KEY)
    (staging / "model.tflite").write_bytes(b"second")
    entry = cache.commit(KEY, staging, {"file": "model.tflite", "size_bytes": 6, "tag": "second"})
    assert entry.manifest["tag"] == "first"
    assert entry.model_path.read_bytes() == b"first"
    assert not staging.exists()
    assert leftovers(cache) == []
    assert len(cache.entries()) == 1


def test_replacing_commit_keeps_the_second(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path)
    make_entry(cache, KEY, payload=b"first", tag="first")
    staging = cache.staging_dir(KEY)
    (staging / "model.tflite").write_bytes(b"second")
    entry = cache.commit(KEY, staging, {"file": "model.tflite", "size_bytes": 6, "tag": "second"}, replace=True)
    assert entry.manifest["tag"] == "second"
    got = cache.get(KEY)
    assert got is not None and got.manifest["tag"] == "second"
    assert got.model_path.read_bytes() == b"second"
    assert leftovers(cache) == []
    assert len(cache.entries()) == 1


def test_discard_removes_staging(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path)
    staging = cache.staging_dir(KEY)
    (staging / "model.tflite").write_bytes(b"x")
    cache.discard(staging)
    assert not staging.exists()
    assert cache.get(KEY) is None


def test_unreadable_manifest_raises_cache_error(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path)
    directory = make_entry(cache, KEY)
    (directory / MANIFEST_NAME).write_text('{"file": "model.tflite", truncated')
    with pytest.raises(CacheError) as info:
        cache.get(KEY)
    assert str(directory) in str(info.value)
    assert info.value.exit_code == 1
    assert info.value.hint and KEY in info.value.hint
    with pytest.raises(CacheError):
        cache.entries()


def test_manifest_of_another_schema_version_is_a_miss(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path)
    directory = make_entry(cache, KEY)
    manifest = json.loads((directory / MANIFEST_NAME).read_text())
    (directory / MANIFEST_NAME).write_text(json.dumps({**manifest, "schema_version": 0}))
    assert cache.get(KEY) is None


def test_get_touches_last_used(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path)
    make_entry(cache, KEY)
    set_last_used(cache, KEY, 1_000_000)
    entry = cache.get(KEY, touch=False)
    assert entry is not None and entry.last_used_s() == 1_000_000
    cache.get(KEY)
    assert entry.last_used_s() > time.time() - 60


# --- concurrency ------------------------------------------------------------------------------------------------


def _commit_worker(root: str, keys: list[str], barrier: Any, results: Any) -> None:
    cache = ArtifactCache(Path(root))
    stagings = {}
    for key in keys:
        staging = cache.staging_dir(key)
        (staging / "model.tflite").write_bytes(f"{os.getpid()}".encode() * 1000)
        stagings[key] = staging
    barrier.wait()
    for key in keys:
        entry = cache.commit(key, stagings[key], {"file": "model.tflite", "size_bytes": 1, "pid": os.getpid()})
        results.put((os.getpid(), key, entry.manifest["pid"], entry.model_path.read_bytes()[:20].decode()))


def test_concurrent_commits_of_a_key_leave_one_entry(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    keys = [f"{i:02d}" + "c" * 30 for i in range(8)]
    barrier = ctx.Barrier(2)
    results = ctx.Queue()
    procs = [ctx.Process(target=_commit_worker, args=(str(tmp_path), keys, barrier, results)) for _ in range(2)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=120)
    assert [proc.exitcode for proc in procs] == [0, 0]
    seen = [results.get(timeout=10) for _ in range(2 * len(keys))]
    cache = ArtifactCache(tmp_path)
    assert sorted(p.name for p in cache.artifacts_dir.iterdir()) == sorted(keys)  # no .tmp-* left behind
    for key in keys:
        entry = cache.get(key)
        assert entry is not None
        winner = entry.manifest["pid"]
        # Both committers got the winner's entry back, and its file is the winner's file, not a mix.
        assert {pid for _, k, pid, _ in seen if k == key} == {winner}
        assert entry.model_path.read_bytes() == f"{winner}".encode() * 1000


def _lock_worker(root: str, log: str, barrier: Any) -> None:
    cache = ArtifactCache(Path(root))
    barrier.wait()
    with cache.lock("group"):
        with open(log, "a") as handle:
            handle.write(f"start {os.getpid()} {time.time():.6f}\n")
        time.sleep(0.5)
        with open(log, "a") as handle:
            handle.write(f"end {os.getpid()} {time.time():.6f}\n")


def test_lock_serialises_processes(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    log = tmp_path / "log.txt"
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_lock_worker, args=(str(tmp_path / "cache"), str(log), barrier)) for _ in range(2)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=60)
    assert [proc.exitcode for proc in procs] == [0, 0]
    lines = [line.split() for line in log.read_text().splitlines()]
    assert [kind for kind, _, _ in lines] == ["start", "end", "start", "end"], lines
    assert lines[0][1] == lines[1][1] and lines[2][1] == lines[3][1] and lines[0][1] != lines[2][1]
    first_end, second_start = float(lines[1][2]), float(lines[2][2])
    assert second_start >= first_end


# --- pruning ----------------------------------------------------------------------------------------------------


@pytest.fixture
def three(tmp_path: Path) -> ArtifactCache:
    """Entries a (oldest use), b, c (newest), 100 bytes each, last used 30, 10 and 1 day(s) ago."""
    cache = ArtifactCache(tmp_path)
    now = time.time()
    for key, days in (("aaaa", 30), ("bbbb", 10), ("cccc", 1)):
        make_entry(cache, key)
        set_last_used(cache, key, now - days * 86400)
    return cache


def keys_of(cache: ArtifactCache) -> list[str]:
    return sorted(e.key for e in cache.entries())


def test_prune_everything(three: ArtifactCache) -> None:
    removed = three.prune(everything=True)
    assert sorted(e.key for e in removed) == ["aaaa", "bbbb", "cccc"]
    assert keys_of(three) == []
    assert not (three.artifacts_dir / "aaaa").exists()


def test_prune_by_key_prefix(three: ArtifactCache) -> None:
    removed = three.prune(keys=("bb",))
    assert [e.key for e in removed] == ["bbbb"]
    assert keys_of(three) == ["aaaa", "cccc"]


def test_prune_older_than(three: ArtifactCache) -> None:
    removed = three.prune(older_than_s=5 * 86400)
    assert sorted(e.key for e in removed) == ["aaaa", "bbbb"]
    assert keys_of(three) == ["cccc"]


def test_prune_to_size_removes_least_recently_used_first(three: ArtifactCache) -> None:
    # Using the oldest entry makes it the newest: now b is the least recently used, then c.
    assert three.get("aaaa") is not None
    removed = three.prune(max_total_bytes=150)
    assert [e.key for e in removed] == ["bbbb", "cccc"]
    assert keys_of(three) == ["aaaa"]


def test_prune_to_size_keeps_everything_under_the_limit(three: ArtifactCache) -> None:
    assert three.prune(max_total_bytes=300) == []
    assert keys_of(three) == ["aaaa", "bbbb", "cccc"]


def test_prune_dry_run_removes_nothing(three: ArtifactCache) -> None:
    removed = three.prune(everything=True, dry_run=True)
    assert sorted(e.key for e in removed) == ["aaaa", "bbbb", "cccc"]
    assert keys_of(three) == ["aaaa", "bbbb", "cccc"]
    assert [e.key for e in three.prune(older_than_s=5 * 86400, max_total_bytes=0, dry_run=True)] == [
        "aaaa", "bbbb", "cccc"]
    assert keys_of(three) == ["aaaa", "bbbb", "cccc"]


def test_prune_removes_stale_staging_but_not_fresh(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path)
    stale = cache.staging_dir("dead")
    fresh = cache.staging_dir("live")
    old = time.time() - 2 * 86400
    os.utime(stale, (old, old))
    cache.prune(keys=("nothing",))
    assert not stale.exists()
    assert fresh.exists()


# --- where the cache lives --------------------------------------------------------------------------------------


def test_default_cache_dir_prefers_farmbench_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FARMBENCH_CACHE_DIR", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "explicit"
    assert ArtifactCache().root == tmp_path / "explicit"


def test_default_cache_dir_uses_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("FARMBENCH_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "farmbench"


def test_default_cache_dir_falls_back_to_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("FARMBENCH_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "farmbench"


def test_empty_env_values_are_ignored(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FARMBENCH_CACHE_DIR", "")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "farmbench"

