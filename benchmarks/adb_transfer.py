"""ADB transfer and command latency: farmbench's adb-shell transport against Debian's `adb`, side by side.

Both talk to the same ADB device emulator on loopback (tests/peers/adb_emulator.py, real wire protocol):

* push   -- a 20 MB random file: `AdbTransport.push` (connection open) vs `adb push` (through its own isolated adb
            server, already connected), alternating A/B; throughput ratio farmbench / adb (goal >= 0.5).
            Both clients negotiate ADB protocol 0x01000001 with the emulator, so neither sends payload checksums
            (farmbench did until it announced that version: the emulator then summed every byte in Python, ratio
            ~0.25). farmbench's time also covers its rename into place (a `mv` over shell, which the emulator runs
            as a /bin/sh process: ~20 ms here) that `adb push` does not do, and its client shares this process's
            GIL with the emulator's threads while `adb` runs in processes of its own.
* command -- per-command latency of `run(["true"])` with TCP_NODELAY (farmbench's setting) and without it
            (adb-shell's default: small packets written behind unacknowledged ones wait on delayed ACKs)

Usage:  python benchmarks/adb_transfer.py [--size-mb 20] [--rounds 5] [--commands 20]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from farmbench.transports.adb import AdbTarget, AdbTransport
from tests.peers.adb_emulator import running_adb_emulator


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def adb_env(home: Path) -> dict[str, str]:
    android = home / ".android"
    android.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ADB_", "ANDROID_"))}
    env.update(HOME=str(home), ANDROID_USER_HOME=str(android), ANDROID_SDK_HOME=str(home),
               ANDROID_ADB_SERVER_PORT=str(free_port()), ADB_VENDOR_KEYS=str(android / "adbkey"))
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--commands", type=int, default=20)
    ns = parser.parse_args()
    adb = shutil.which("adb")
    if adb is None:
        raise SystemExit("Debian's adb is needed: apt-get install adb")
    with tempfile.TemporaryDirectory(prefix="farmbench-adb-bench-") as tmp_text:
        tmp = Path(tmp_text)
        payload = tmp / "payload.bin"
        payload.write_bytes(os.urandom(ns.size_mb * 2**20))
        env = adb_env(tmp / "adb-home")
        subprocess.run([adb, "keygen", env["ADB_VENDOR_KEYS"]], env=env, check=True, capture_output=True)
        with running_adb_emulator(tmp / "sandbox", auth="none") as emulator:
            subprocess.run([adb, "start-server"], env=env, check=True, capture_output=True, timeout=30)
            try:
                subprocess.run([adb, "connect", emulator.serial], env=env, check=True, capture_output=True,
                               timeout=30)
                subprocess.run([adb, "-s", emulator.serial, "wait-for-device"], env=env, check=True, timeout=30)
                target = AdbTarget(host="127.0.0.1", port=emulator.port, key_path=tmp / "fb-key" / "adbkey")
                transport = AdbTransport(target, device="emulator")
                push_s: list[float] = []
                adb_s: list[float] = []
                for _ in range(ns.rounds):
                    started = time.perf_counter()
                    transport.push(payload, "/data/local/tmp/bench_fb.bin", timeout_s=300)
                    push_s.append(time.perf_counter() - started)
                    started = time.perf_counter()
                    subprocess.run([adb, "-s", emulator.serial, "push", str(payload), "/data/local/tmp/bench_adb.bin"],
                                   env=env, check=True, capture_output=True, timeout=300)
                    adb_s.append(time.perf_counter() - started)
                for name in ("bench_fb.bin", "bench_adb.bin"):
                    copied = emulator.sandbox / "data/local/tmp" / name
                    if copied.read_bytes() != payload.read_bytes():
                        raise SystemExit(f"{name} differs from what was pushed")
                transport.close()
                latency_ms: dict[bool, float] = {}
                for nodelay in (True, False):
                    probe = AdbTransport(AdbTarget(host="127.0.0.1", port=emulator.port,
                                                   key_path=tmp / "fb-key" / "adbkey", tcp_nodelay=nodelay))
                    probe.run(["true"], timeout_s=30)
                    started = time.perf_counter()
                    for _ in range(ns.commands):
                        probe.run(["true"], timeout_s=30)
                    latency_ms[nodelay] = (time.perf_counter() - started) / ns.commands * 1000
                    probe.close()
            finally:
                subprocess.run([adb, "kill-server"], check=False, env=env, capture_output=True, timeout=30)
    size_mb = ns.size_mb * 2**20 / 1e6
    fb, ad = statistics.median(push_s), statistics.median(adb_s)
    print(f"push {ns.size_mb} MiB, median of {ns.rounds} alternating rounds (byte-identical on the device):")
    print(f"  farmbench AdbTransport.push  {fb:7.3f} s  {size_mb / fb:7.1f} MB/s")
    print(f"  adb push (Debian)            {ad:7.3f} s  {size_mb / ad:7.1f} MB/s")
    print(f"  throughput farmbench / adb   {ad / fb:7.2f}   (goal >= 0.5)")
    print(f"per command, run(['true']) x{ns.commands}:")
    print(f"  TCP_NODELAY on (farmbench)   {latency_ms[True]:7.1f} ms")
    print(f"  TCP_NODELAY off (adb-shell)  {latency_ms[False]:7.1f} ms")


if __name__ == "__main__":
    main()
