"""HTML reports from stored results: one static page per report, readable offline.

``write_report(store, run_ids, out_path)`` selects the runs (:func:`farmbench.report.data.select_runs`), gathers what
the page shows (:mod:`farmbench.report.data`), draws the figures (:mod:`farmbench.report.figures`) and renders the
page (:mod:`farmbench.report.html`). plotly.js comes from the plotly Python package: written once beside the page as
``plotly-<version>.min.js`` (4.8 MB, shared by every report in the folder, so a folder of nightly reports does not
hold a copy per page), or inlined with ``self_contained=True`` for a single file to send around.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from farmbench.errors import ReportError, UsageError
from farmbench.report.options import DEFAULT_DIRECTORY, ReportOptions

if TYPE_CHECKING:  # numpy, pandas and plotly load only when a report is written
    from farmbench.report.data import ReportData
    from farmbench.results.schema import RunInfo
    from farmbench.results.store import ResultStore

__all__ = ["ReportOptions", "build_html", "default_report_path", "selected_runs", "write_report"]


def default_report_path(run_id: str, directory: Path | None = None) -> Path:
    """``./reports/<run-id>.html`` under the current directory (or ``directory``)."""
    return (directory if directory is not None else Path.cwd() / DEFAULT_DIRECTORY) / f"{run_id}.html"


def resolve_out_path(out: Path | None, run_id: str) -> Path:
    """Where the page goes: ``out`` when it names an .html file; ``out/<run-id>.html`` when it is a directory (an
    existing one, or a name without a suffix); the default otherwise."""
    if out is None:
        return default_report_path(run_id)
    if out.is_dir() or not out.suffix:
        return default_report_path(run_id, out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise UsageError(f"--out {out}: a report is an .html file or a directory",
                         hint="for example --out reports/ or --out nightly.html")
    return out


def plotly_js() -> tuple[str, str]:
    """plotly.js as bundled with the plotly Python package: (version, source). No network access."""
    from plotly.offline import get_plotlyjs, get_plotlyjs_version

    return str(get_plotlyjs_version()), str(get_plotlyjs())


def _write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (a partial file never has the final name)."""
    partial = path.with_name(f".{path.name}.partial")
    try:
        partial.write_text(text, encoding="utf-8")
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)


def _ensure_plotly_beside(directory: Path) -> tuple[str, str]:
    version, source = plotly_js()
    name = f"plotly-{version}.min.js"
    target = directory / name
    expected = len(source.encode("utf-8"))
    if not (target.is_file() and target.stat().st_size == expected):
        _write_text(target, source)
    return name, version


def selected_runs(store: ResultStore, run_ids: Sequence[str] = (), *, anchor: str | None = None,
                  options: ReportOptions | None = None) -> list[RunInfo]:
    """The runs a report covers, oldest first (see :func:`farmbench.report.data.select_runs`)."""
    from farmbench.report.data import select_runs

    return select_runs(store, run_ids, anchor=anchor, history=(options or ReportOptions()).history)


def build_html(store: ResultStore, run_ids: Sequence[str] = (), *, anchor: str | None = None,
               options: ReportOptions | None = None, plotly_src: str | None = None) -> tuple[str, ReportData]:
    """The page as text, and the data behind it. ``plotly_src`` is the script's relative URL (ignored when
    ``options.self_contained``)."""
    from farmbench.report.data import load_report_data
    from farmbench.report.html import build_page, render
    from farmbench.report.trends import mark_trends

    options = options or ReportOptions()
    runs = selected_runs(store, run_ids, anchor=anchor, options=options)
    data = load_report_data(store, runs, min_top1_agreement=options.min_top1_agreement,
                            max_points=options.max_points)
    data, note, regressions = mark_trends(store, data)
    version, source = plotly_js()
    page = build_page(data, plotly_src=None if options.self_contained else (plotly_src or f"plotly-{version}.min.js"),
                      plotly_inline=source if options.self_contained else None, plotly_version=version,
                      trend_note=note, regressions=regressions)
    return render(page), data


def write_report(store: ResultStore, run_ids: Sequence[str] = (), out_path: Path | None = None, *,
                 anchor: str | None = None, options: ReportOptions | None = None) -> Path:
    """Write the report of ``run_ids`` (default: the latest run, or ``anchor``, with earlier runs of its sweep) to
    ``out_path`` (default ``./reports/<run-id>.html``) and return the page's path. Unless self-contained, plotly.js
    is written beside the page (once; later reports in the same folder reuse it)."""
    options = options or ReportOptions()
    runs = selected_runs(store, run_ids, anchor=anchor, options=options)
    target = resolve_out_path(out_path, runs[-1].id).expanduser().absolute()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        src = None
        if not options.self_contained:
            src, _ = _ensure_plotly_beside(target.parent)
        text, _ = build_html(store, [r.id for r in runs], options=options, plotly_src=src)
        _write_text(target, text)
    except OSError as exc:
        raise ReportError(f"cannot write the report to {target}: {exc.strerror or exc}",
                          hint="choose another place with --out") from exc
    return target
