"""The page: a Jinja2 template with autoescaping on, so every value from a device or a config (names, models, OS
builds, error messages, flags, sweep names, paths) is HTML-escaped by default. Nothing is marked safe except

* :func:`script_json` -- JSON for a ``<script type="application/json">`` element, with ``<``, ``>`` and ``&`` (and
  U+2028/U+2029) written as ``\\u`` escapes, so no string inside can close the element or open a comment; and
* the page's own static script and style, and plotly.js when it is inlined (checked for ``</script``).

A Content-Security-Policy meta tag allows only scripts carrying the page's random nonce and no network access at
all: the page works offline, and even a string that escaped escaping could not run.
"""

from __future__ import annotations

import json
import math
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import jinja2
from markupsafe import Markup

from farmbench import __version__
from farmbench.report.data import (
    INFO_FLAGS,
    Combo,
    Recommendation,
    ReportData,
    flag_column,
    flag_help,
    side_by_side,
)
from farmbench.report.figures import Figure, FigureBuilder
from farmbench.report.trends import RegressionRow
from farmbench.results.scrub import scrub

_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("farmbench.report", "templates"),
    autoescape=True,  # every {{ }} is escaped unless it is Markup; the templates never use |safe
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def script_json(text: str) -> Markup:
    """JSON text safe inside a ``<script>`` element. Outside strings JSON has none of these characters, and inside
    strings the ``\\u`` escapes decode to the same text, so ``JSON.parse`` gives back exactly the original."""
    safe = (text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))
    return Markup(safe)


def inline_script(source: str) -> Markup:
    """A trusted script (plotly.js, our own) for inlining: refuse anything that could end the element early."""
    lowered = source.lower()
    if "</script" in lowered or "<!--" in lowered:
        raise ValueError("script text contains '</script' or '<!--' and cannot be inlined as is")
    return Markup(source)


def _ms(value_us: float | None) -> str:
    if value_us is None or not math.isfinite(value_us):
        return "—"
    ms = value_us / 1000.0
    if ms < 1:
        return f"{ms:.3f}"
    return f"{ms:.2f}" if ms < 100 else f"{ms:.0f}"


def _num(value: float | None, pattern: str = "{:.1f}") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return pattern.format(value)


def _pct(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value * 100:.{digits}f}%"


def _sortv(value: float | None) -> str:
    """The data-v attribute a sortable cell carries: the raw number, or empty (sorted last)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    return repr(float(value))


def _flatten(doc: Any, prefix: str = "") -> list[tuple[str, str]]:
    """A nested document as ``(dotted.key, value)`` rows; lists of scalars joined with commas."""
    if isinstance(doc, Mapping):
        rows: list[tuple[str, str]] = []
        for key, value in doc.items():
            rows.extend(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return rows
    if isinstance(doc, list) and all(not isinstance(v, (Mapping, list)) for v in doc):
        return [(prefix, ", ".join(str(v) for v in doc))]
    if isinstance(doc, list):
        return [(prefix, json.dumps(doc, default=str))]
    return [(prefix, "" if doc is None else str(doc))]


for _name, _filter in {"ms": _ms, "num": _num, "pct": _pct, "sortv": _sortv, "script_json": script_json,
                       "flag_help": flag_help, "flag_column": flag_column}.items():
    _ENV.filters[_name] = _filter


@dataclass(frozen=True)
class DeviceSection:
    name: str
    anchor: str
    combos: list[Combo]
    recommendation: Recommendation | None
    figures: list[Figure]
    missing: list[str]  # views that could not be drawn, and why
    failures: list[Any]
    trend: Figure | None


@dataclass(frozen=True)
class Page:
    title: str
    data: ReportData
    sections: list[DeviceSection]
    side_devices: list[str]
    side_rows: list[tuple[str, dict[str, Combo]]]
    side_figure: Figure | None
    trend_note: str
    regressions: list[RegressionRow]
    figures: list[Figure]
    flags_seen: list[str]
    plotly_src: str | None
    plotly_inline: Markup | None
    plotly_version: str
    nonce: str
    generated_at: str
    version: str = __version__
    sweep_rows: list[tuple[str, str]] = field(default_factory=list)
    command: str = ""


def _anchor(index: int) -> str:
    return f"device-{index + 1}"


def build_page(data: ReportData, *, plotly_src: str | None, plotly_inline: str | None, plotly_version: str,
               trend_note: str, regressions: Sequence[RegressionRow] = ()) -> Page:
    """Every view of the page, figures numbered in page order."""
    builder = FigureBuilder()
    sections = []
    recommendations = {r.device: r for r in data.recommendations}
    for index, device in enumerate(data.devices):
        combos = [c for c in data.combos if c.device == device.name]
        measured = [c for c in combos if c.ok]
        figures: list[Figure] = []
        missing: list[str] = []
        if measured:
            distribution = builder.distributions(measured, data.max_points)
            if distribution:
                figures.append(distribution)
            heatmaps = builder.heatmaps(measured)
            figures.extend(heatmaps)
            if not heatmaps:
                missing.append("Width × resolution heatmaps: this sweep measured one width and one resolution per "
                               "family here; a grid needs two or more of either.")
            drift = builder.drift_pareto(measured, data.min_top1_agreement)
            if drift:
                figures.append(drift)
            else:
                missing.append("Latency vs drift: fewer than two combinations with accuracy drift here "
                               f"({_drift_reason(measured)}).")
            energy = builder.energy_pareto(measured)
            if energy:
                figures.append(energy)
            else:
                missing.append("Latency vs energy: no power measured on this device (add a [power] table to its "
                               "device file; see README, Power and temperature).")
            speedup = builder.speedups(measured)
            if speedup:
                figures.append(speedup)
            else:
                missing.append("Speed-up over fp32: no quantised variant here has a measured fp32 twin.")
        lines = [t for t in data.trends if t.device == device.name]
        trend = builder.trends(device.name, lines, marked=data.trend_marks == "compare") \
            if len(data.runs) > 1 else None
        sections.append(DeviceSection(device.name, _anchor(index), combos, recommendations.get(device.name), figures,
                                      missing, [f for f in data.failures if f.device == device.name], trend))
    side_devices, side_rows = side_by_side(data.combos)
    side_figure = builder.devices_side_by_side(side_rows, side_devices)
    figures = [f for s in sections for f in s.figures] + ([side_figure] if side_figure else []) \
        + [s.trend for s in sections if s.trend]
    flags_seen = sorted({f for c in data.combos for f in c.flags}, key=lambda f: (flag_column(f), f))
    subject = data.subject
    return Page(
        title=f"farmbench report: run {subject.id}", data=data, sections=sections, side_devices=side_devices,
        side_rows=side_rows, side_figure=side_figure, trend_note=trend_note, regressions=list(regressions),
        figures=figures, flags_seen=flags_seen, plotly_src=plotly_src,
        plotly_inline=inline_script(plotly_inline) if plotly_inline is not None else None,
        plotly_version=plotly_version, nonce=secrets.token_urlsafe(16),
        generated_at=datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        sweep_rows=_flatten(scrub(subject.sweep)), command=" ".join(str(a) for a in scrub(list(subject.command))),
    )


def _drift_reason(combos: Sequence[Combo]) -> str:
    notes = sorted({c.drift_note for c in combos if c.drift_note})
    return "; ".join(notes) if notes else "only one combination"


def render(page: Page) -> str:
    return _ENV.get_template("report.html.j2").render(page=page, data=page.data, info_flags=INFO_FLAGS)
