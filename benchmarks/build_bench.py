"""Measure farmbench's build stage: a cold build, the cached rebuild of the same grid, and memory per group.

Runs the real CLI in subprocesses against a fresh cache directory, side by side:

* cold     -- `farmbench build` into an empty cache (trains random weights, converts, verifies)
* cached   -- the same command again; every artifact must come from the cache
* ratio    -- cached / cold wall time (goal: <= 2%)

Per artifact it reports conversion seconds and the build worker's peak RSS (from the manifests), per group the
model build time. Usage:

    python benchmarks/build_bench.py                       # the default sweep
    python benchmarks/build_bench.py --family mobilenet_v2 --width 0.35 --resolution 96 --quant fp32,int8
    python benchmarks/build_bench.py --repeats-cached 5 --json bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_build(args: list[str], cache_dir: Path) -> tuple[float, dict]:
    env = {**os.environ, "FARMBENCH_CACHE_DIR": str(cache_dir)}
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "farmbench", "build", "--json", *args],
                          env=env, capture_output=True, text=True)
    wall_s = time.perf_counter() - started
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"farmbench build exited {proc.returncode}")
    return wall_s, json.loads(proc.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for flag in ("--family", "--width", "--resolution", "--quant", "--format", "--sweep", "--jobs"):
        parser.add_argument(flag)
    parser.add_argument("--repeats-cached", type=int, default=3)
    parser.add_argument("--json", dest="json_out", type=Path)
    ns = parser.parse_args()
    build_args: list[str] = []
    for flag in ("family", "width", "resolution", "quant", "format", "sweep", "jobs"):
        value = getattr(ns, flag)
        if value is not None:
            build_args += [f"--{flag}", value]

    with tempfile.TemporaryDirectory(prefix="farmbench-bench-") as tmp:
        cache_dir = Path(tmp)
        cold_s, cold = run_build(build_args, cache_dir)
        cached_runs = [run_build(build_args, cache_dir) for _ in range(ns.repeats_cached)]
        cached_s = statistics.median(wall for wall, _ in cached_runs)
        not_cached = [a["name"] for _, doc in cached_runs for a in doc["artifacts"] if a["status"] != "cached"]
        rows = []
        for artifact in cold["artifacts"]:
            manifest = json.loads((Path(artifact["path"]).parent / "manifest.json").read_text())
            build = manifest["build"]
            rows.append({
                "name": artifact["name"], "status": artifact["status"],
                "convert_s": build.get("convert_seconds"), "model_s": build.get("model_seconds"),
                "worker_peak_rss_mb": build.get("worker_peak_rss_mb"), "size_bytes": manifest["size_bytes"],
            })

    print(f"{'artifact':<52} {'convert s':>9} {'model s':>8} {'peak RSS MB':>11}")
    for row in rows:
        print(f"{row['name']:<52} {row['convert_s']:>9.1f} {row['model_s']:>8.1f} {row['worker_peak_rss_mb']:>11.0f}")
    ratio = cached_s / cold_s
    print(f"\ncold build      {cold_s:8.1f} s  ({len(rows)} artifacts, {os.cpu_count()} cores)")
    print(f"cached rebuild  {cached_s:8.2f} s  (median of {len(cached_runs)})")
    print(f"cached / cold   {ratio:8.2%}  (goal <= 2%)")
    if not_cached:
        print(f"WARNING: not taken from the cache on rebuild: {not_cached}")
    if ns.json_out:
        ns.json_out.write_text(json.dumps({"cold_s": cold_s, "cached_s": cached_s, "ratio": ratio,
                                           "artifacts": rows}, indent=2))


if __name__ == "__main__":
    main()
