"""The HTML report: what it computes, what it escapes, what it writes, and how a real browser renders it.

The data is a results database written through ResultStore (tests/synthetic_results.py: an SSH board with raw
samples, an Android phone with aggregates only, failures, trust flags, three runs of one sweep, and hostile strings
wherever a device or a config puts text). The browser is Debian's chromium, headless, driven over the DevTools
protocol (tests/peers/browser.py); a missing chromium skips those tests, or fails them when CI=true. Screenshots go
to pytest's temporary directory (the path is printed) and, when CI=true, to .ci/artifacts/ (git-ignored).

The end-to-end test at the bottom runs a real `farmbench run` on this machine (slow: it needs the shared model grid).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import markupsafe
import numpy as np
import pytest

from farmbench.errors import EXIT_USAGE, RunNotFoundError, UsageError
from farmbench.report import ReportOptions, build_html, write_report
from farmbench.report.data import load_report_data, pareto, select_runs, within_budget
from farmbench.report.html import inline_script, script_json
from farmbench.results.store import ResultStore
from tests.conftest import GRID_FLAGS, REPO, BuiltGrid, cli_command, cli_env, describe, in_ci
from tests.peers.browser import chromium_page, require_chromium
from tests.synthetic_results import (
    BOARD_NAME,
    FAILING_ERROR,
    PHONE_NAME,
    SECRET,
    SWEEP_NAME,
    XSS,
    Synthetic,
    write_synthetic_results,
)

HOSTILE = (XSS, BOARD_NAME, PHONE_NAME, SWEEP_NAME, FAILING_ERROR, 'Acme "Phones" & Sons',
           "google/shiba/shiba:14/<AP2A>/&1234")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Synthetic:
    db = tmp_path_factory.mktemp("report-db") / "results.db"
    return write_synthetic_results(db, widths=(0.35, 0.5), resolutions=(96, 128), repeats=2, runs=3,
                                   samples_per_session=120)


@pytest.fixture
def store(synthetic: Synthetic) -> Iterator[ResultStore]:
    with ResultStore(synthetic.db, create=False) as opened:
        yield opened


@pytest.fixture(scope="module")
def page(synthetic: Synthetic, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default report of the synthetic database (plotly.js beside it)."""
    with ResultStore(synthetic.db, create=False) as opened:
        return write_report(opened, out_path=tmp_path_factory.mktemp("report-page"))


# -- run selection ----------------------------------------------------------------------------------------------


def test_default_selection_is_the_latest_run_and_earlier_runs_of_its_sweep(synthetic: Synthetic,
                                                                           tmp_path: Path) -> None:
    shutil.copy(synthetic.db, tmp_path / "results.db")
    with ResultStore(tmp_path / "results.db") as store:
        ids = synthetic.run_ids
        assert [r.id for r in select_runs(store, history=10)] == ids
        assert [r.id for r in select_runs(store, history=2)] == ids[1:]
        assert [r.id for r in select_runs(store, history=1)] == ids[2:]
        assert [r.id for r in select_runs(store, anchor=ids[1], history=10)] == ids[:2]
        assert [r.id for r in select_runs(store, [ids[2], ids[0]])] == [ids[0], ids[2]]  # named: oldest first
        # A run of another sweep becomes the latest: the default selection is that run alone.
        other = store.start_run(sweep_name="other", sweep={"name": "other"}, plan=[], command=["farmbench"])
        assert [r.id for r in select_runs(store, history=10)] == [other]
        assert [r.id for r in select_runs(store, anchor=ids[2], history=10)] == ids


def test_selection_errors_are_usage_errors(store: ResultStore, tmp_path: Path) -> None:
    with pytest.raises(RunNotFoundError) as missing:
        select_runs(store, ["r-nope"])
    assert missing.value.exit_code == EXIT_USAGE and "r-nope" in str(missing.value)
    with ResultStore(tmp_path / "empty.db") as empty, pytest.raises(UsageError) as none:
        select_runs(empty)
    assert none.value.exit_code == EXIT_USAGE and "farmbench run" in (none.value.hint or "")


# -- numbers ----------------------------------------------------------------------------------------------------


def test_combinations_pool_samples_and_keep_aggregate_only_honest(store: ResultStore, synthetic: Synthetic) -> None:
    runs = select_runs(store, anchor=synthetic.run_ids[-1])
    data = load_report_data(store, runs, max_points=50)
    records = {r.id: r for r in store.measurements([synthetic.run_ids[-1]])}
    board = [c for c in data.combos if c.device == BOARD_NAME and c.ok]
    phone = [c for c in data.combos if c.device == PHONE_NAME and c.ok]
    assert board and phone
    for combo in board:
        mine = [records[i] for i in combo.measurement_ids if records[i].status == "ok"]
        pooled = np.concatenate([r.samples_us for r in mine])
        assert combo.p50_us == pytest.approx(float(np.percentile(pooled, 50)))
        assert combo.p99_us == pytest.approx(float(np.percentile(pooled, 99)))
        lows = [r.latency.ci95_low_us for r in mine if r.latency]
        highs = [r.latency.ci95_high_us for r in mine if r.latency]
        assert (combo.ci_low_us, combo.ci_high_us) == (min(lows), max(highs))  # type: ignore[type-var]
        assert combo.ci_kind == ("envelope" if len(mine) > 1 else "bootstrap")
        quantiles = combo.distribution.quantiles_us
        assert combo.distribution.kind == "samples" and len(quantiles) == 50
        assert quantiles[0] == pooled.min() and quantiles[-1] == pooled.max()
        assert list(quantiles) == sorted(quantiles) and combo.distribution.n == pooled.size
    for combo in phone:
        mine = [records[i] for i in combo.measurement_ids if records[i].status == "ok"]
        assert combo.aggregate_only and combo.p90_us is None and combo.p99_us is None
        medians = [r.latency.p50_us for r in mine if r.latency]
        assert combo.p50_us == pytest.approx(float(np.median(medians)))
        assert combo.ci_kind == "session range" and combo.ci_low_us == min(medians)  # type: ignore[type-var]
        assert combo.distribution.kind == "aggregate" and "aggregate_only" in combo.flags


def test_speedups_drift_and_flags_come_from_the_right_records(store: ResultStore, synthetic: Synthetic) -> None:
    data = load_report_data(store, select_runs(store, anchor=synthetic.run_ids[-1]))
    by_label = {(c.device, c.artifact, c.runtime): c for c in data.combos}
    for combo in data.combos:
        if not combo.ok or combo.quant in (None, "fp32"):
            continue
        twin = by_label[(combo.device, combo.artifact.replace(f"_{combo.quant}.", "_fp32."), combo.runtime)]
        assert combo.speedup_vs_fp32 == pytest.approx(twin.p50_us / combo.p50_us)  # type: ignore[operator]
        if combo.speedup_low is not None:
            assert combo.speedup_low <= combo.speedup_vs_fp32 <= combo.speedup_high  # type: ignore[operator]
        assert combo.top1_agreement is not None and combo.drift_reference == twin.artifact
    throttled = [c for c in data.combos if "throttled" in c.flags]
    assert throttled and all(c.device == BOARD_NAME and c.quant == "fp32" for c in throttled)
    assert all("throttled" in c.flags_for("latency") for c in throttled)
    charging = [c for c in data.combos if "charging" in c.flags]
    assert charging and all("charging" in c.flags_for("energy") and "charging" not in c.flags_for("latency")
                            for c in charging)
    assert all(c.flag_sessions["charging"] == 1 and c.sessions_ok == 2 for c in charging)  # the first repeat only


def test_the_pick_is_the_fastest_within_the_drift_budget(store: ResultStore, synthetic: Synthetic) -> None:
    for budget in (0.99, 0.9, 0.0):
        data = load_report_data(store, select_runs(store, anchor=synthetic.run_ids[-1]), min_top1_agreement=budget)
        for recommendation in data.recommendations:
            measured = [c for c in data.combos if c.device == recommendation.device and c.ok]
            allowed = [c for c in measured if c.top1_agreement is not None and c.top1_agreement >= budget]
            best = min(allowed, key=lambda c: c.p50_us or 0.0)
            assert recommendation.pick is not None and recommendation.pick.p50_us == best.p50_us
            assert recommendation.fastest is not None
            assert recommendation.fastest.p50_us == min(c.p50_us or 0.0 for c in measured)
            for _, pick, _ in recommendation.per_architecture:
                assert pick is None or within_budget(pick, budget)
        if budget == 0.0:  # no budget: the fastest overall is the pick
            assert all(r.pick == r.fastest for r in data.recommendations)


def test_trend_marks_come_from_the_regression_check(synthetic: Synthetic, tmp_path: Path) -> None:
    with ResultStore(synthetic.db, create=False) as opened:
        text, data = build_html(opened, options=ReportOptions(history=10))
    assert data.trend_marks == "compare" and len(data.runs) == 3
    slowed = [t for t in data.trends if t.device == BOARD_NAME and t.label.startswith(synthetic.slowed + " ·")]
    assert len(slowed) == 1
    first, second, last = slowed[0].points
    assert first.verdict is None and second.verdict == "unchanged" and last.verdict == "regression", slowed
    assert last.p50_us / second.p50_us > 1.25  # type: ignore[operator]
    # Nothing else on the board slowed down: no other latency regression is marked there.
    marked = [t.label for t in data.trends if t.device == BOARD_NAME and t.points[-1].verdict == "regression"]
    assert marked == [slowed[0].label]
    assert "regression" in text and f"{synthetic.slowed} · litert t1" in text and "+3" in text


def test_pareto_keeps_only_points_nothing_beats_on_both_axes() -> None:
    points = [(1.0, 5.0), (2.0, 3.0), (2.5, 4.0), (3.0, 1.0), (4.0, 1.0), (0.5, 9.0), (2.0, 3.5)]
    front = pareto(points)
    assert [points[i] for i in front] == [(0.5, 9.0), (1.0, 5.0), (2.0, 3.0), (3.0, 1.0)]
    for i, point in enumerate(points):
        dominated = any(o[0] <= point[0] and o[1] <= point[1] and o != point for o in points)
        assert (i in front) == (not dominated)


def test_failures_are_grouped_and_scrubbed(store: ResultStore, synthetic: Synthetic) -> None:
    data = load_report_data(store, select_runs(store, anchor=synthetic.run_ids[-1]))
    failed = {(f.device, f.error_class): f for f in data.failures}
    runner = failed[(PHONE_NAME, "RunnerError")]
    assert runner.message == FAILING_ERROR and runner.artifacts == (synthetic.failing,) and runner.count == 2
    connect = failed[(BOARD_NAME, "ConnectError")]
    assert SECRET not in connect.message and "<redacted>" in connect.message and connect.transient
    assert failed[(PHONE_NAME, "skipped")].count == 2 * 2 * 3 * 2  # every ONNX artifact, both repeats


# -- escaping and offline ---------------------------------------------------------------------------------------


class _Scripts(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[dict[str, str | None]] = []
        self.plots: list[str] = []
        self.meta: dict[str, str] = {}
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "script":
            self.scripts.append(attributes)
        if tag == "div" and "fb-plot" in (attributes.get("class") or ""):
            self.plots.append(attributes.get("data-figure") or "")
        if tag == "meta" and attributes.get("name"):
            self.meta[str(attributes["name"])] = attributes.get("content") or ""
        if tag == "meta" and attributes.get("http-equiv"):
            self.meta[str(attributes["http-equiv"])] = attributes.get("content") or ""
        for name in ("src", "href"):
            if attributes.get(name):
                self.urls.append(str(attributes[name]))


def test_device_and_config_text_is_escaped_everywhere(page: Path) -> None:
    text = page.read_text()
    for raw in HOSTILE:
        assert raw not in text, f"unescaped: {raw!r}"
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text  # shown, escaped, in the devices table
    assert str(markupsafe.escape(FAILING_ERROR)) in text  # &amp; &#34; &lt; as Jinja2 writes them
    assert SECRET not in text  # scrubbed: in an error message, a device context and a command line


def test_only_the_pages_own_scripts_exist_and_figure_json_round_trips(page: Path) -> None:
    text = page.read_text()
    parsed = _Scripts()
    parsed.feed(text)
    data_blocks = [s for s in parsed.scripts if s.get("type") == "application/json"]
    code = [s for s in parsed.scripts if s.get("type") != "application/json"]
    nonce = code[0].get("nonce")
    assert nonce and all(s.get("nonce") == nonce for s in code) and len(code) == 2  # plotly.js and ours
    assert code[0].get("src", "").startswith("plotly-") and code[0].get("src", "").endswith(".min.js")
    assert f"'nonce-{nonce}'" in parsed.meta["Content-Security-Policy"]
    assert "default-src 'none'" in parsed.meta["Content-Security-Policy"]
    assert sorted(s.get("id") or "" for s in data_blocks) == sorted(parsed.plots)
    assert int(parsed.meta["farmbench-figures"]) == len(parsed.plots) >= 10
    for figure_id in parsed.plots:
        body = re.search(rf'<script type="application/json" id="{figure_id}">(.*?)</script>', text, re.DOTALL)
        assert body is not None
        assert "<" not in body.group(1) and ">" not in body.group(1) and "&" not in body.group(1)
        figure = json.loads(body.group(1))
        assert figure["data"] and "layout" in figure
    # Offline: nothing the page refers to lives on a network.
    assert parsed.urls and all(not re.match(r"(?i)(https?:)?//", url) for url in parsed.urls), parsed.urls
    assert (page.parent / code[0]["src"]).is_file()  # type: ignore[operator]


def test_script_json_cannot_close_its_element() -> None:
    hostile = {"name": "</script><script>alert(1)</script>", "c": "<!-- x --> & \u2028\u2029 ]]>"}
    text = str(script_json(json.dumps(hostile)))
    assert "</" not in text and "<!--" not in text and "\u2028" not in text and "&" not in text
    assert json.loads(text) == hostile
    with pytest.raises(ValueError):
        inline_script("var a = '</script>';")


def test_plotly_js_is_written_once_beside_reports(synthetic: Synthetic, tmp_path: Path) -> None:
    with ResultStore(synthetic.db, create=False) as opened:
        first = write_report(opened, out_path=tmp_path)
        js = next(tmp_path.glob("plotly-*.min.js"))
        stamp = js.stat().st_mtime_ns
        second = write_report(opened, [synthetic.run_ids[0]], out_path=tmp_path)
        single = write_report(opened, out_path=tmp_path / "single.html",
                              options=ReportOptions(self_contained=True, history=1))
    assert first != second and first.name == f"{synthetic.run_ids[-1]}.html"
    assert js.stat().st_mtime_ns == stamp  # reused, not rewritten
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([first.name, second.name, js.name, "single.html"])
    parsed = _Scripts()
    parsed.feed(single.read_text())
    assert not any(s.get("src") for s in parsed.scripts)  # plotly.js inlined
    assert len(single.read_text()) > js.stat().st_size


def test_report_size_stays_small_with_raw_samples_downsampled(page: Path, synthetic: Synthetic) -> None:
    size = page.stat().st_size
    # 2 devices x 24 artifacts, 2 sessions of 120 samples each on the board: well under a megabyte.
    assert 20_000 < size < 1_000_000, size


# -- the command line -------------------------------------------------------------------------------------------


def _farmbench(*args: str | Path, cwd: Path, timeout_s: float = 120.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cli_command(*args), env=cli_env(None), cwd=cwd, capture_output=True, text=True,
                          timeout=timeout_s, check=False)


def test_report_command_writes_under_reports_in_the_current_directory(synthetic: Synthetic, tmp_path: Path) -> None:
    proc = _farmbench("report", "--db", synthetic.db, cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    expected = tmp_path / "reports" / f"{synthetic.run_ids[-1]}.html"
    assert proc.stdout.strip() == f"wrote {expected}" and expected.is_file()
    assert len(list((tmp_path / "reports").glob("plotly-*.min.js"))) == 1
    out = _farmbench("report", "--db", synthetic.db, "--run", synthetic.run_ids[0], "--out", "nightly.html",
                     cwd=tmp_path)
    assert out.returncode == 0, describe(out)
    assert (tmp_path / "nightly.html").is_file() and synthetic.run_ids[0] in (tmp_path / "nightly.html").read_text()


@pytest.mark.parametrize("case", ["no database", "no runs", "unknown run", "bad out"])
def test_report_command_usage_errors_exit_2(case: str, synthetic: Synthetic, tmp_path: Path) -> None:
    args: list[str | Path] = ["report", "--db", tmp_path / "results.db"]
    expected = "run `farmbench run` first"
    if case == "no runs":
        ResultStore(tmp_path / "results.db").close()
    elif case == "unknown run":
        args = ["report", "--db", synthetic.db, "--run", "r-nope"]
        expected = "farmbench results"
    elif case == "bad out":
        args = ["report", "--db", synthetic.db, "--out", "report.txt"]
        expected = "--out nightly.html"
    proc = _farmbench(*args, cwd=tmp_path)
    assert proc.returncode == EXIT_USAGE, describe(proc)
    assert proc.stderr.startswith("error: ") and expected in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "reports").exists()


# -- in a real browser ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rendered:
    problems: list[str]
    requests: list[str]
    declared: int
    plots: int
    drawn: int
    scripts: list[dict[str, Any]]
    body_text: str
    svg_text: list[str]
    screenshot: Path


def keep_artifact(path: Path) -> None:
    """Print where a screenshot is; under CI=true also copy it to .ci/artifacts/ (kept by CI, ignored by git)."""
    print(f"report screenshot: {path}")
    if in_ci():
        target = REPO / ".ci" / "artifacts" / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
        print(f"report screenshot kept for CI: {target}")


def render(page_path: Path, screenshot: Path, *, sort_check: bool = False) -> Rendered:
    chromium = require_chromium()
    with chromium_page(chromium) as tab:
        tab.navigate(page_path.as_uri())
        tab.wait_for("document.body.hasAttribute('data-plots-rendered') || "
                     "document.body.hasAttribute('data-plots-failed')", timeout_s=120)
        declared = int(tab.evaluate("document.querySelector('meta[name=farmbench-figures]').content"))
        plots = int(tab.evaluate("document.querySelectorAll('div.fb-plot').length"))
        drawn = int(tab.evaluate("Array.from(document.querySelectorAll('div.fb-plot'))"
                                 ".filter(d => d.querySelector('.plot-container .main-svg')).length"))
        scripts = tab.evaluate("Array.from(document.scripts).map(s => ({type: s.type, src: s.getAttribute('src'),"
                               " nonce: s.nonce, id: s.id}))")
        body_text = str(tab.evaluate("document.body.innerText"))
        svg_text = list(tab.evaluate("Array.from(document.querySelectorAll('svg text')).map(t => t.textContent)"))
        if sort_check:
            check_sorting(tab)
        tab.pump(0.3)
        shot = tab.screenshot(screenshot)
        keep_artifact(shot)
        return Rendered(tab.log.problems(), tab.log.requests, declared, plots, drawn, scripts, body_text, svg_text,
                        shot)


def check_sorting(tab: Any) -> None:
    """Click the p50 header of the first measurements table: ascending, then descending, missing values last."""
    column = ("Array.from(document.querySelector('table.measurements').tHead.rows[0].cells)"
              ".findIndex(c => c.textContent.trim().startsWith('p50'))")
    index = int(tab.evaluate(column))
    values = (f"Array.from(document.querySelector('table.measurements').tBodies[0].rows)"
              f".map(r => parseFloat(r.cells[{index}].getAttribute('data-v')))")
    before = tab.evaluate(values)
    tab.evaluate(f"document.querySelector('table.measurements').tHead.rows[0].cells[{index}].click()")
    ascending = tab.evaluate(values)
    tab.evaluate(f"document.querySelector('table.measurements').tHead.rows[0].cells[{index}].click()")
    descending = tab.evaluate(values)
    assert sorted(before) == ascending and ascending == descending[::-1] and ascending != descending
    assert tab.evaluate(f"document.querySelector('table.measurements').tHead.rows[0].cells[{index}]"
                        ".getAttribute('aria-sort')") == "descending"


def test_report_renders_in_chromium_without_errors(page: Path, tmp_path: Path) -> None:
    rendered = render(page, tmp_path / "report.png", sort_check=True)
    assert rendered.problems == [], rendered.problems
    assert rendered.declared == rendered.plots == rendered.drawn >= 10
    # Offline: the page and plotly.js from disk; plotly's own images as data: URLs; nothing else.
    assert all(url.startswith(("file:", "data:", "blob:")) for url in rendered.requests), rendered.requests
    # No injected element: every script is a figure's data block or one of the page's two, with the nonce.
    code = [s for s in rendered.scripts if s["type"] != "application/json"]
    assert len(code) == 2 and all(s["nonce"] for s in code), rendered.scripts
    assert all(re.fullmatch(r"fig-\d+", s["id"]) for s in rendered.scripts if s["type"] == "application/json")
    # Hostile strings are shown as text: in the tables, and in plotly's SVG (legend entries, tick labels).
    for raw in (XSS, PHONE_NAME, BOARD_NAME, FAILING_ERROR):
        assert raw in rendered.body_text, raw
    assert PHONE_NAME in rendered.svg_text and BOARD_NAME in rendered.svg_text
    assert rendered.screenshot.stat().st_size > 50_000


def test_self_contained_report_renders_in_chromium(synthetic: Synthetic, tmp_path: Path) -> None:
    with ResultStore(synthetic.db, create=False) as opened:
        single = write_report(opened, out_path=tmp_path / "single.html",
                              options=ReportOptions(self_contained=True, history=1))
    assert [p.name for p in tmp_path.iterdir()] == ["single.html"]
    rendered = render(single, tmp_path / "single.png")
    assert rendered.problems == [] and rendered.declared == rendered.drawn >= 8, rendered.problems
    assert all(url.startswith(("file:", "data:", "blob:")) for url in rendered.requests), rendered.requests


# -- end to end: a real run writes its report -------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_cache(built_grid: BuiltGrid, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return built_grid.copy(tmp_path_factory.mktemp("report-cache") / "cache")


# conftest's cli_env turns the run's report off for every other test; these runs write theirs by default again.
REPORT_ON = {"FARMBENCH_RUN_REPORT": "true"}
QUICK = ("--runs", "20", "--min-s", "0", "--max-s", "30", "--warmup-runs", "2", "--warmup-min-s", "0",
         "--repeats", "1", "--eval-images", "8")


@dataclass(frozen=True)
class RealRun:
    proc: subprocess.CompletedProcess[str]
    cwd: Path
    db: Path


@pytest.fixture(scope="module")
def real_run(run_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> RealRun:
    cwd = tmp_path_factory.mktemp("report-run")
    db = cwd / "results.db"
    proc = subprocess.run(cli_command("run", *GRID_FLAGS, "--quant", "fp32,int8", "--format", "tflite",
                                      "--device", "local", *QUICK, "--db", db),
                          env=cli_env(run_cache, REPORT_ON), cwd=cwd, capture_output=True, text=True, timeout=900,
                          check=False)
    return RealRun(proc, cwd, db)


@pytest.mark.slow
def test_a_real_run_writes_its_report(real_run: RealRun, tmp_path: Path) -> None:
    proc = real_run.proc
    assert proc.returncode == 0, describe(proc)
    with ResultStore(real_run.db, create=False) as opened:
        (run,) = opened.runs()
    page = real_run.cwd / "reports" / f"{run.id}.html"
    assert f"report: {page}" in proc.stdout, describe(proc)
    text = page.read_text()
    assert run.id in text and "mobilenet_v2_a0.35_r96_int8.tflite" in text and "Which variant to ship" in text
    rendered = render(page, tmp_path / "real-run.png")
    assert rendered.problems == [], rendered.problems
    assert rendered.declared == rendered.drawn >= 3  # distributions, drift pareto, speed-up at least
    assert "Ship mobilenet_v2_a0.35_r96_" in rendered.body_text


@pytest.mark.slow
def test_no_report_suppresses_it(run_cache: Path, tmp_path: Path) -> None:
    proc = subprocess.run(cli_command("run", *GRID_FLAGS, "--quant", "fp32", "--format", "tflite", "--device",
                                      "local", *QUICK, "--no-drift", "--no-report", "--db", tmp_path / "r.db"),
                          env=cli_env(run_cache, REPORT_ON), cwd=tmp_path, capture_output=True, text=True,
                          timeout=900, check=False)
    assert proc.returncode == 0, describe(proc)
    assert "report:" not in proc.stdout and not (tmp_path / "reports").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("r.db")) == []
    # The same run reported afterwards, from another directory, with --out.
    later = _farmbench("report", "--db", tmp_path / "r.db", "--out", tmp_path / "later", cwd=REPO)
    assert later.returncode == 0, describe(later)
    assert len(list((tmp_path / "later").glob("r*.html"))) == 1
