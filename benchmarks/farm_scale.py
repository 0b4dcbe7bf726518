"""Farm scale: parallel efficiency of `farmbench run` over many simulated devices at once. Goal: >= 0.8.

    parallel efficiency = sum over devices of busy time / (devices x wall time)

* busy time of a device: the sum, over its measurements, of each measurement's start to its commit in the results
  database (``started_at`` -> ``finished_at``): checking the model is on the device (pushing it the first time),
  the thermal reads around the run, the benchmark process itself, parsing and storing. What is not busy time is
  farmbench's orchestration: connecting and probing each device, the gap between one measurement's commit and the
  next one's start, and devices idling while the run waits for the last one.
* wall time: the run's own span in the database (``runs.started_at`` -> ``runs.finished_at``: from the run's row
  being created until it is marked finished), so building or loading artifacts before the run does not count.

The farm (tests/peers/farm.py): N SSH board entries on one OpenSSH sshd on loopback (each with its own identity and
cache directory; the agent runs with this Python) and M ADB device emulators on their own ports (benchmark_model
stand-ins running LiteRT on this machine). Every device runs the same short workload: mobilenet_v2 a0.35 r96 fp32
and int8 TFLite, --runs 3, no minimum time, no drift pass, --repeats R. All devices share this machine's cores, so
each measurement takes longer as devices are added; efficiency measures how much of the wall time every device had
a measurement in flight, i.e. what farmbench itself costs around them. It also prints the figure with connect and
probe counted as busy, busy time over each device's own span (without the wait for slower devices at the end),
and where each kind of device spent its time.

Every command on a loopback "board" runs in the login shell of the user running the benchmark, and bash sources
~/.bashrc for commands sshd runs: on a machine whose ~/.bashrc runs `pyenv init` that is ~0.2 s per command, which
makes board measurements several times as long as the emulated phones' (the phones then finish their plans early
and idle) and is a cost of this machine, not of farmbench. So the boards' sshd skips the rc file (tests/peers/sshd.py
LEAN_SHELL_CONFIG) unless ``--login-shell`` is given. ``--boards 0 --phones 16`` and ``--boards 16 --phones 0``
measure homogeneous farms.

Usage:

    python benchmarks/farm_scale.py                          # 8 boards + 8 phones, repeats 4
    python benchmarks/farm_scale.py --boards 4 --phones 12 --repeats 2 --json farm.json
    python benchmarks/farm_scale.py --cache-dir /tmp/fb-cache  # reuse a cache holding the grid
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
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

GRID = ["--family", "mobilenet_v2", "--width", "0.35", "--resolution", "96", "--quant", "fp32,int8",
        "--format", "tflite"]
WORKLOAD = ["--runs", "3", "--min-s", "0", "--warmup-runs", "1", "--warmup-min-s", "0", "--no-drift"]


def env_for(cache_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARMBENCH_")}
    env.pop("SSH_AUTH_SOCK", None)
    env.update({"FARMBENCH_CACHE_DIR": str(cache_dir), "TF_CPP_MIN_LOG_LEVEL": "2",
                "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)})
    return env


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--boards", type=int, default=8, help="SSH board entries (default 8)")
    parser.add_argument("--phones", type=int, default=8, help="ADB emulators (default 8)")
    parser.add_argument("--repeats", type=int, default=4, help="sessions per artifact and device (default 4)")
    parser.add_argument("--cache-dir", type=Path, help="artifact cache (default: a temporary one, built first)")
    parser.add_argument("--login-shell", action="store_true",
                        help="let the boards' commands run your login shell's rc file (default: skip it, as a board"
                             " without one would)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)

    from farmbench.results.store import ResultStore
    from tests.peers.farm import simulated_farm

    with tempfile.TemporaryDirectory(prefix="farm-scale-") as tmp_text:
        tmp = Path(tmp_text)
        cache = args.cache_dir or tmp / "cache"
        built = subprocess.run([sys.executable, "-m", "farmbench", "build", *GRID,
                                "--quiet"], env=env_for(cache), cwd=REPO, capture_output=True, text=True, check=False)
        if built.returncode != 0:
            print(built.stdout, built.stderr, file=sys.stderr)
            return 1
        db = tmp / "results.db"
        with simulated_farm(tmp / "farm", boards=args.boards, phones=args.phones,
                            lean_shell=not args.login_shell) as farm:
            started = time.monotonic()
            proc = subprocess.run([sys.executable, "-m", "farmbench", "run", *GRID, *farm.device_args(),
                                   "--repeats", str(args.repeats), *WORKLOAD, "--json", "--db", str(db)],
                                  env=env_for(cache), cwd=REPO, capture_output=True, text=True, check=False)
            cli_s = time.monotonic() - started
        if proc.returncode != 0:
            print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
            return 1
        summary = json.loads(proc.stdout)
        with ResultStore(db, create=False) as store:
            (run,) = store.runs()
            names = {device.id: device.name for device in store.devices()}
            records = store.measurements(with_samples=False)
    assert run.finished_at is not None
    wall_s = epoch(run.finished_at) - epoch(run.started_at)
    spans: dict[str, list[tuple[float, float]]] = {}
    for record in records:
        assert record.started_at and record.finished_at
        spans.setdefault(names[record.device_id], []).append((epoch(record.started_at), epoch(record.finished_at)))
    run_start, run_end = epoch(run.started_at), epoch(run.finished_at)
    busy = {name: sum(end - start for start, end in found) for name, found in spans.items()}
    first_start = {name: min(start for start, _ in found) for name, found in spans.items()}
    # Where each device's non-busy time went: before its first measurement (connect, probe), between two of its
    # measurements (storing one, starting the next), after its last (waiting for the other devices).
    setup = {name: first_start[name] - run_start for name in spans}
    gaps = {name: sum(b[0] - a[1] for a, b in zip(sorted(found), sorted(found)[1:])) for name, found in spans.items()}
    tail = {name: run_end - max(end for _, end in found) for name, found in spans.items()}
    devices = len(farm.devices)
    efficiency = sum(busy.values()) / (devices * wall_s)
    # Connecting and probing (from the run's start to a device's first measurement) counted as busy too.
    with_setup = sum(busy[name] + setup[name] for name in busy) / (devices * wall_s)
    # Busy time over each device's own span (run start -> its last commit): what farmbench's orchestration costs a
    # device while it has work, without the wait for slower devices at the end (a plan's imbalance, not overhead).
    active = sum(busy.values()) / sum(wall_s - tail[name] for name in busy)
    kinds = {device.name: device.kind for device in farm.devices}
    by_kind = {kind: {part: round(statistics.mean(values[n] for n in busy if kinds[n] == kind), 2)
                      for part, values in (("busy", busy), ("connect_probe", setup), ("after_last", tail))}
               for kind in sorted(set(kinds.values()))}
    measurement_s = [epoch(r.finished_at) - epoch(r.started_at) for r in records if r.started_at and r.finished_at]
    figures: dict[str, Any] = {
        "devices": devices, "boards": args.boards, "phones": args.phones, "measurements": len(records),
        "login_shell_rc": args.login_shell,
        "ok": summary["ok"], "failed": summary["failed"], "wall_s": round(wall_s, 2), "cli_s": round(cli_s, 2),
        "busy_s_total": round(sum(busy.values()), 2), "parallel_efficiency": round(efficiency, 3),
        "parallel_efficiency_setup_as_busy": round(with_setup, 3),
        "busy_over_own_span": round(active, 3), "per_kind_mean_s": by_kind,
        "median_measurement_s": round(statistics.median(measurement_s), 3),
        "per_device_mean_s": {"busy": round(statistics.mean(busy.values()), 2),
                              "connect_probe": round(statistics.mean(setup.values()), 2),
                              "between_measurements": round(statistics.mean(gaps.values()), 2),
                              "after_last": round(statistics.mean(tail.values()), 2)},
        "busy_s_by_device": {name: round(seconds, 2) for name, seconds in sorted(busy.items())},
        "load_average": os.getloadavg(),
    }
    print(f"{devices} devices ({args.boards} SSH boards, {args.phones} ADB emulators), {len(records)} measurements"
          f" ({summary['ok']} ok, {summary['failed']} failed)")
    print(f"wall time of the run        {wall_s:8.1f} s   (the CLI process: {cli_s:.1f} s)")
    print(f"busy time, all devices      {sum(busy.values()):8.1f} s   (median measurement {figures['median_measurement_s']} s)")
    print(f"parallel efficiency         {efficiency:8.3f}     (goal >= 0.8)")
    print(f"  with connect+probe busy   {with_setup:8.3f}")
    print(f"busy / each device's span   {active:8.3f}     (run start to the device's last measurement)")
    mean = figures["per_device_mean_s"]
    print(f"per device, mean: busy {mean['busy']} s, connect+probe {mean['connect_probe']} s, between measurements"
          f" {mean['between_measurements']} s, after its last {mean['after_last']} s")
    for kind, means in by_kind.items():
        print(f"  {kind} devices, mean: busy {means['busy']} s, connect+probe {means['connect_probe']} s,"
              f" after their last {means['after_last']} s")
    print(f"load average                {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0 if summary["failed"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
