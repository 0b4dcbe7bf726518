"""How long `farmbench report` takes and how big the page gets, for a realistic results database.

Writes a database through ResultStore (tests/synthetic_results.py: an SSH board with raw samples, an Android phone
with aggregates only, failures and flags) -- by default 3 widths x 3 resolutions x 3 quantisations x TFLite/ONNX on
two devices, 2 repeats, 1000 samples per session: 216 measurements per run, 5 runs of the sweep -- then measures:

* cold   -- `python -m farmbench report` as a fresh process (imports included), median of --rounds
* warm   -- `write_report` in this process after one warm-up (data loading, figures, rendering), median
           (both as wall time and CPU time: on a shared machine CPU time is the steadier figure)
* page   -- size of the HTML page, of its figure JSON, number of figures; plotly.js beside it
* render -- with --browser, load in headless Chromium until every figure is drawn (needs Debian's chromium)

Usage (from the repository root):

    python benchmarks/report_bench.py
    python benchmarks/report_bench.py --runs 10 --samples 3000 --rounds 5 --browser
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from farmbench.report import write_report
from farmbench.results.store import ResultStore
from tests.synthetic_results import write_synthetic_results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="runs of the sweep in the database")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--samples", type=int, default=1000, help="raw samples per board session")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--browser", action="store_true", help="also time rendering in headless Chromium")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="fb-report-bench-") as tmp:
        directory = Path(tmp)
        started = time.monotonic()
        synthetic = write_synthetic_results(directory / "results.db", runs=args.runs, repeats=args.repeats,
                                            samples_per_session=args.samples)
        per_run = synthetic.measurements // args.runs
        print(f"database: {synthetic.measurements} measurements ({per_run} per run, {args.runs} runs), "
              f"{(directory / 'results.db').stat().st_size / 1e6:.1f} MB, written in {time.monotonic() - started:.1f} s")

        cold, cold_cpu = [], []
        for _ in range(args.rounds):
            started = time.monotonic()
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            subprocess.run([sys.executable, "-m", "farmbench", "report", "--db", str(directory / "results.db"),
                            "--out", str(directory / "cold")], check=True, capture_output=True, cwd=directory,
                           env={**{k: v for k, v in os.environ.items() if not k.startswith("FARMBENCH_")},
                                "PYTHONPATH": str(REPO)})
            cold.append(time.monotonic() - started)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cold_cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)

        warm, warm_cpu = [], []
        with ResultStore(directory / "results.db", create=False) as store:
            page = write_report(store, out_path=directory / "warm")
            for _ in range(args.rounds):
                started, cpu = time.monotonic(), time.process_time()
                page = write_report(store, out_path=directory / "warm")
                warm.append(time.monotonic() - started)
                warm_cpu.append(time.process_time() - cpu)
        text = page.read_text()
        figures = re.findall(r'<script type="application/json" id="fig-\d+">(.*?)</script>', text, re.DOTALL)
        js = next(page.parent.glob("plotly-*.min.js"))
        print(f"cold `farmbench report` (new process): median {statistics.median(cold):.2f} s wall, "
              f"{statistics.median(cold_cpu):.2f} s CPU ({', '.join(f'{s:.2f}' for s in cold)} s wall)")
        print(f"warm write_report: median {statistics.median(warm):.2f} s wall, {statistics.median(warm_cpu):.2f} s "
              f"CPU ({', '.join(f'{s:.2f}' for s in warm)} s wall)")
        print(f"load average: {', '.join(f'{v:.1f}' for v in os.getloadavg())}")
        print(f"page: {len(text.encode()) / 1e3:.0f} kB, {len(figures)} figures holding "
              f"{sum(len(f) for f in figures) / 1e3:.0f} kB of JSON; {js.name} beside it: {js.stat().st_size / 1e6:.1f} MB")

        if args.browser:
            from tests.peers.browser import chromium_page

            renders = []
            for _ in range(args.rounds):
                with chromium_page("chromium") as tab:
                    started = time.monotonic()
                    tab.navigate(page.as_uri())
                    tab.wait_for("document.body.hasAttribute('data-plots-rendered')", timeout_s=300)
                    renders.append(time.monotonic() - started)
                    problems = tab.log.problems()
            print(f"chromium load until every figure is drawn: median {statistics.median(renders):.2f} s "
                  f"({', '.join(f'{s:.2f}' for s in renders)}); console problems: {problems or 'none'}")


if __name__ == "__main__":
    main()
