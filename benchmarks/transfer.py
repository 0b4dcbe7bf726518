"""Transfer: SFTP push of a 20 MB file through farmbench's SshTransport vs OpenSSH's `scp`, to the same sshd on
loopback (started as the test fixture starts it: tests/peers/sshd.py).

Alternates A/B for several rounds so drift lands on both sides, each time to a fresh remote name:

* push        -- SshTransport.push(file, remote) on an open connection (SFTP put to a temporary name, then rename)
* push+conn   -- the same plus connecting and closing (what one `scp` process also pays)
* scp         -- `scp -q -P PORT -i KEY ... file user@127.0.0.1:remote` (OpenSSH 9+: SFTP protocol by default)
* scp -O      -- the legacy SCP protocol, with --legacy-scp

Every copy is checked by size and sha256 against the source. Prints per-round seconds, medians, MB/s and the
ratios push/scp and push+conn/scp (below 1: farmbench is faster). Usage:

    python benchmarks/transfer.py
    python benchmarks/transfer.py --size-mb 50 --rounds 7 --legacy-scp --json transfer.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from farmbench.transports.ssh import SshTransport
from tests.peers.sshd import running_sshd


def sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--legacy-scp", action="store_true", help="also time `scp -O` (the SCP protocol)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="fb-transfer-") as tmp:
        directory = Path(tmp)
        (directory / "sshd").mkdir()
        (directory / "remote").mkdir()
        source = directory / "payload.bin"
        source.write_bytes(os.urandom(int(args.size_mb * 1024 * 1024)))
        expected = sha256(source)
        with running_sshd(directory / "sshd") as peer:
            known_hosts = peer.write_known_hosts(directory / "known_hosts")
            target = peer.target(known_hosts)
            counter = iter(range(10**6))

            def destination() -> Path:
                return directory / "remote" / f"copy-{next(counter)}.bin"

            def check(path: Path) -> None:
                if path.stat().st_size != source.stat().st_size or sha256(path) != expected:
                    raise SystemExit(f"{path} differs from the source")
                path.unlink()

            board = SshTransport(target, device="loopback")

            def push() -> Path:
                remote = destination()
                board.push(source, str(remote), timeout_s=120)
                return remote

            def push_and_connect() -> Path:
                remote = destination()
                with SshTransport(target, device="loopback") as fresh:
                    fresh.push(source, str(remote), timeout_s=120)
                return remote

            def scp(*extra: str) -> Callable[[], Path]:
                def run() -> Path:
                    remote = destination()
                    subprocess.run(["scp", "-q", *extra, "-P", str(peer.port), "-i", str(peer.client_key),
                                    "-F", "/dev/null", "-o", f"UserKnownHostsFile={known_hosts}",
                                    "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
                                    str(source), f"{peer.user}@{peer.host}:{remote}"], check=True)
                    return remote
                return run

            sides: dict[str, Callable[[], Path]] = {"push": push, "push+conn": push_and_connect, "scp": scp()}
            if args.legacy_scp:
                sides["scp -O"] = scp("-O")
            for action in sides.values():  # warm the page cache and sshd once, untimed
                check(action())
            times: dict[str, list[float]] = {name: [] for name in sides}
            order = list(sides)
            for round_ in range(args.rounds):
                # A/B alternation: reverse the order every other round.
                for name in order if round_ % 2 == 0 else reversed(order):
                    start = time.perf_counter()
                    copied = sides[name]()
                    times[name].append(time.perf_counter() - start)
                    check(copied)
            board.close()
        report: dict[str, Any] = {"size_mb": args.size_mb, "rounds": args.rounds, "seconds": times,
                                  "median_s": {name: statistics.median(values) for name, values in times.items()}}
    size_mb = args.size_mb
    print(f"{size_mb:g} MB random file, loopback sshd, {args.rounds} rounds alternating "
          f"{' / '.join(order)}")
    for name, values in times.items():
        median = report["median_s"][name]
        print(f"  {name:<10} median {median:.3f} s  ({size_mb / median:6.1f} MB/s)   rounds: "
              + " ".join(f"{v:.3f}" for v in values))
    medians = report["median_s"]
    report["ratio_push_vs_scp"] = medians["push"] / medians["scp"]
    report["ratio_push_conn_vs_scp"] = medians["push+conn"] / medians["scp"]
    print(f"  ratio push / scp:        {report['ratio_push_vs_scp']:.2f}")
    print(f"  ratio push+conn / scp:   {report['ratio_push_conn_vs_scp']:.2f}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
