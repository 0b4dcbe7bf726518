"""Sweep efficiency: wall time of `farmbench run` with every artifact cached, divided by the time spent inside the
agent's timed loops (the sum of each measurement's ``timed_wall_s``). Goal: <= 1.15.

Runs the real CLI (`python -m farmbench run ... --json`) on device ``local`` and, with ``--ssh``, on a real OpenSSH
sshd on loopback started the way the test fixture starts it (tests/peers/sshd.py; the "board" runs the agent with
this Python). The grid is mobilenet_v2 a0.35 r96, fp32 and int8, TFLite (LiteRT) and ONNX (ONNX Runtime); it is
built first if the cache lacks it (minutes), then timed as a cache check.

The breakdown comes from the results database (measurement start/end, timed_wall_s, warmup_s, init_ms,
first_inference_ms) and the clock around the CLI process:

    cli start + build check    process start -> run row created (imports, sweep, artifact cache check, db open)
    connect + probe            run created -> first measurement starts (connect, push agent, probe, identity)
    timed loops                sum of timed_wall_s                               <- the useful part
    warm-up                    sum of warmup_s (the protocol's warm-up, --warmup-runs / --warmup-min-s)
    init + first inference     model load + allocate + first invoke, inside the agent
    agent start + transport    the rest of each measurement: Python start, numpy/runtime import, sha check of the
                               model on the device, the SSH command round trips, reading the JSON
    storing                    between one measurement's end and the next one's start (stats + one transaction)
    exit                       last measurement -> process exit (finish run, summary, interpreter shutdown)

To explain "agent start", it also times `python -c "import numpy; import <runtime>"` here, and with --ssh the cost
of one `true` over the SSH transport (a login shell that runs a heavy ~/.bashrc makes every command slower).
Usage:

    python benchmarks/sweep_efficiency.py                                  # local; runs 100, repeats 2
    python benchmarks/sweep_efficiency.py --ssh --json efficiency.json
    python benchmarks/sweep_efficiency.py --cache-dir /tmp/fb-cache -- --warmup-min-s 0 --min-s 2
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

GRID = ["--family", "mobilenet_v2", "--width", "0.35", "--resolution", "96", "--quant", "fp32,int8",
        "--format", "tflite,onnx", "--runtime", "litert,onnxruntime"]


def env_for(cache_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARMBENCH_")}
    env.update({"FARMBENCH_CACHE_DIR": str(cache_dir), "TF_CPP_MIN_LOG_LEVEL": "2",
                "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)})
    return env


def farmbench(args: list[str], cache_dir: Path, timeout_s: float = 3600) -> tuple[subprocess.CompletedProcess[str],
                                                                                    float, float]:
    """Run the CLI; returns the process, and its start and end as epoch seconds."""
    start = time.time()
    proc = subprocess.run([sys.executable, "-m", "farmbench", *args], check=False, env=env_for(cache_dir), cwd=REPO,
                          capture_output=True, text=True, timeout=timeout_s)
    return proc, start, time.time()


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()  # "...Z" parses as UTC on Python 3.11+


def median_seconds(argv: list[str], times: int = 3) -> float:
    samples = []
    for _ in range(times):
        start = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def breakdown(db: Path, start: float, end: float) -> dict[str, Any]:
    from farmbench.results.store import ResultStore

    with ResultStore(db, create=False) as store:
        (run,) = store.runs()
        records = sorted(store.measurements(), key=lambda r: r.id)
    wall = end - start
    timed = sum(float(r.context.get("timed_wall_s") or 0) for r in records)
    warmup = sum(float(r.context.get("warmup_s") or 0) for r in records)
    init = sum(((r.init_ms or 0) + (r.first_inference_ms or 0)) / 1000 for r in records)
    spans = [epoch(r.finished_at) - epoch(r.started_at) for r in records]
    gaps = [epoch(b.started_at) - epoch(a.finished_at) for a, b in itertools.pairwise(records)]
    gaps.append(epoch(run.finished_at) - epoch(records[-1].finished_at))
    parts = {
        "cli start + build check": epoch(run.started_at) - start,
        "connect + probe": epoch(records[0].started_at) - epoch(run.started_at),
        "timed loops": timed,
        "warm-up": warmup,
        "init + first inference": init,
        "agent start + transport": sum(spans) - timed - warmup - init,
        "storing": sum(gaps),
        "exit": end - epoch(run.finished_at),
    }
    return {
        "measurements": len(records), "ok": sum(r.status == "ok" for r in records),
        "wall_s": wall, "timed_s": timed, "ratio": wall / timed if timed else float("inf"), "parts_s": parts,
        "per_measurement_s": {"span": statistics.median(spans),
                              "timed": statistics.median(float(r.context.get("timed_wall_s") or 0) for r in records),
                              "warmup": statistics.median(float(r.context.get("warmup_s") or 0) for r in records),
                              "other": statistics.median(
                                  s - float(r.context.get("timed_wall_s") or 0) - float(r.context.get("warmup_s") or 0)
                                  - ((r.init_ms or 0) + (r.first_inference_ms or 0)) / 1000
                                  for s, r in zip(spans, records))},
    }


def ssh_device_file(directory: Path, peer: Any) -> Path:
    known_hosts = peer.write_known_hosts(directory / "known_hosts")
    ssh_config = directory / "ssh_config"
    ssh_config.write_text("")
    path = directory / "loopback-board.toml"
    path.write_text(
        f'kind = "ssh"\nname = "loopback-board"\nhost = "{peer.host}"\nport = {peer.port}\nuser = "{peer.user}"\n'
        f'key_file = "{peer.client_key}"\nknown_hosts = "{known_hosts}"\nssh_config = "{ssh_config}"\n'
        f'python = "{sys.executable}"\ncache_dir = "{directory / "board-cache"}"\n')
    return path


def ssh_command_cost(peer: Any, known_hosts: Path) -> float:
    from farmbench.transports.ssh import SshTransport

    with SshTransport(peer.target(known_hosts)) as board:
        board.run(["true"], timeout_s=30)  # probes the board's `timeout` once
        samples = []
        for _ in range(7):
            start = time.perf_counter()
            board.run(["true"], timeout_s=30).check()
            samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--ssh", action="store_true", help="also run on a loopback sshd board")
    parser.add_argument("--no-local", action="store_true", help="skip device local")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="artifact cache (default: $FARMBENCH_CACHE_DIR or ~/.cache/farmbench)")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    parser.add_argument("extra", nargs="*", help="more `farmbench run` flags, after --")
    args = parser.parse_args()

    from farmbench.variants.cache import default_cache_dir

    cache_dir = args.cache_dir or default_cache_dir()
    proc, start, end = farmbench(["build", *GRID[:-2], "--jobs", "1", "--json"], cache_dir)
    if proc.returncode != 0:
        print(proc.stdout, proc.stderr, file=sys.stderr)
        return 1
    statuses = [a["status"] for a in json.loads(proc.stdout)["artifacts"]]
    if any(s != "cached" for s in statuses):  # it just built them: time the cache check now
        proc, start, end = farmbench(["build", *GRID[:-2], "--json"], cache_dir)
    report: dict[str, Any] = {"cache_dir": str(cache_dir), "build_check_cli_s": end - start,
                              "run_flags": ["--runs", str(args.runs), "--repeats", str(args.repeats), *args.extra],
                              "devices": {}}
    print(f"cache {cache_dir}: `farmbench build` of the cached grid takes {end - start:.2f} s (whole CLI)")
    report["agent_start_s"] = {
        "python+numpy+litert": median_seconds([sys.executable, "-c", "import numpy, ai_edge_litert.interpreter"]),
        "python+numpy+onnxruntime": median_seconds([sys.executable, "-c", "import numpy, onnxruntime"]),
    }
    for name, seconds in report["agent_start_s"].items():
        print(f"fresh process: {name} imports in {seconds:.2f} s")

    with tempfile.TemporaryDirectory(prefix="fb-efficiency-") as tmp, ExitStack() as stack:
        directory = Path(tmp)
        devices: list[tuple[str, str]] = [] if args.no_local else [("local", "local")]
        if args.ssh:
            from tests.peers.sshd import running_sshd

            sshd_dir = directory / "sshd"
            sshd_dir.mkdir()
            peer = stack.enter_context(running_sshd(sshd_dir))
            device = ssh_device_file(directory, peer)
            devices.append(("ssh", str(device)))
            report["ssh_true_s"] = ssh_command_cost(peer, directory / "known_hosts")
            print(f"ssh: one `true` over the transport takes {report['ssh_true_s']:.2f} s (median of 7)")
        for label, device in devices:
            db = directory / f"{label}.db"
            proc, start, end = farmbench(["run", *GRID, "--runs", str(args.runs), "--repeats", str(args.repeats),
                                          *args.extra, "--device", device, "--db", str(db), "--json"], cache_dir)
            if proc.returncode != 0:
                print(f"{label}: farmbench run failed (exit {proc.returncode})\n{proc.stdout}\n{proc.stderr}",
                      file=sys.stderr)
                return 1
            figures = breakdown(db, start, end)
            report["devices"][label] = figures
            print(f"\n{label}: {figures['ok']}/{figures['measurements']} ok; wall {figures['wall_s']:.2f} s, "
                  f"timed loops {figures['timed_s']:.2f} s -> ratio {figures['ratio']:.2f} (goal <= 1.15)")
            for part, seconds in figures["parts_s"].items():
                print(f"  {part:<26} {seconds:7.2f} s  {100 * seconds / figures['wall_s']:5.1f}%")
            per = figures["per_measurement_s"]
            print(f"  per measurement (median): {per['span']:.2f} s = timed {per['timed']:.2f} + warm-up "
                  f"{per['warmup']:.2f} + agent start/init/transport {per['other']:.2f}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
