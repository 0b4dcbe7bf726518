"""One plotly figure builder per view, from :mod:`farmbench.report.data`. Each returns a :class:`Figure` (plotly's
JSON plus a title and a caption) or None when the data cannot support the view; the page says why instead.

Text from devices and configs (artifact names, device names, flags) goes into figures through :func:`plot_text`:
plotly renders a subset of HTML in trace names, tick labels and hover text, so ``<`` and ``&`` are escaped as
entities, which it shows literally. Figures use the empty ``"none"`` template: plotly's default template would add
about 7 kB to every figure.
"""

from __future__ import annotations

import html
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from farmbench.report.data import Combo, Trend, pareto

QUANT_COLORS: dict[str, str] = {"fp32": "#1f77b4", "fp16": "#2ca02c", "dynamic-int8": "#9467bd", "int8": "#d62728",
                                "int8-io": "#ff7f0e"}
OTHER_COLOR = "#7f7f7f"
FORMAT_SYMBOLS: dict[str, str] = {"tflite": "circle", "onnx": "diamond"}
_GRID = "#e5e5e5"
_BASE_LAYOUT: dict[str, Any] = {
    "template": "none", "font": {"family": "system-ui, sans-serif", "size": 12},
    "margin": {"l": 60, "r": 20, "t": 30, "b": 50}, "hoverlabel": {"align": "left"},
    "paper_bgcolor": "white", "plot_bgcolor": "white",
}


@dataclass(frozen=True)
class Figure:
    id: str
    title: str
    caption: str
    json: str  # plotly's figure JSON, not yet made safe for a <script> element (html.script_json does that)
    height_px: int


def plot_text(text: object) -> str:
    """Text for a plotly label: HTML-like markup escaped into entities that plotly shows literally."""
    return html.escape(str(text), quote=False)


def _ms(value_us: float | None) -> float | None:
    return None if value_us is None else round(value_us / 1000.0, 6)


def _fmt_ms(value_us: float | None) -> str:
    if value_us is None:
        return "—"
    ms = value_us / 1000.0
    return f"{ms:.3f} ms" if ms < 10 else f"{ms:.1f} ms"


def _color(quant: str | None) -> str:
    return QUANT_COLORS.get(quant or "", OTHER_COLOR)


def _axis(title: str, **extra: Any) -> dict[str, Any]:
    return {"title": {"text": title}, "gridcolor": _GRID, "zeroline": False, "linecolor": "#999", **extra}


def _log_axis(title: str, values: Sequence[float | None]) -> dict[str, Any]:
    """A log axis labelled with plain numbers at 1-2-5 steps (plotly's default labels only the mantissa digits
    between decades, e.g. "2 3 4 5", which reads badly for milliseconds)."""
    present = [v for v in values if v is not None and v > 0 and math.isfinite(v)]
    if not present:
        return _axis(title, type="log")
    low, high = min(present) / 1.3, max(present) * 1.3
    ticks: list[float] = []
    for mantissas in ((1, 2, 5), (1, 2, 3, 4, 5, 6, 7, 8, 9)):
        ticks = [float(f"{m * 10.0 ** e:.12g}") for e in range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)
                 for m in mantissas if low <= m * 10.0 ** e <= high]
        if len(ticks) >= 3:
            break
    return _axis(title, type="log", tickvals=ticks, ticktext=[f"{t:g}" for t in ticks])


class FigureBuilder:
    """Numbers figures in page order (``fig-1``, ``fig-2``, ...) and serialises them."""

    def __init__(self) -> None:
        self.count = 0

    def _make(self, figure: go.Figure, title: str, caption: str, height_px: int) -> Figure:
        self.count += 1
        figure.update_layout(**_BASE_LAYOUT, height=height_px)
        return Figure(f"fig-{self.count}", title, caption, figure.to_json(), height_px)

    # -- latency distributions -------------------------------------------------------------------------------------

    def distributions(self, combos: Sequence[Combo], max_points: int) -> Figure | None:
        shown = [c for c in combos if c.ok and c.distribution.kind != "none"]
        if not shown:
            return None
        figure = go.Figure()
        aggregate = 0
        for combo in reversed(shown):  # plotly draws the first category at the bottom
            dist = combo.distribution
            label = plot_text(combo.label)
            if dist.kind == "samples":
                figure.add_trace(go.Violin(
                    x=[float(f"{v / 1000.0:.5g}") for v in dist.quantiles_us], y0=label,
                    orientation="h", name=label, line={"color": _color(combo.quant), "width": 1},
                    box={"visible": True}, meanline={"visible": False}, points=False, spanmode="hard",
                    scalemode="width", width=0.8, showlegend=False, hoveron="kde+violins",
                    hovertemplate=f"%{{x:.4g}} ms<extra>n = {dist.n:d}</extra>",
                ))
            else:
                aggregate += 1
                s = dist.summary_us
                figure.add_trace(go.Box(
                    y=[label], q1=[_ms(s.get("p5"))], median=[_ms(s.get("p50"))], q3=[_ms(s.get("p95"))],
                    lowerfence=[_ms(s.get("min"))], upperfence=[_ms(s.get("max"))], mean=[_ms(s.get("mean"))],
                    orientation="h", name=label, showlegend=False,
                    line={"color": _color(combo.quant), "width": 1}, fillcolor="rgba(0,0,0,0)",
                    hovertext=[f"aggregate only ({dist.n:d} runs): box p5-p95, whiskers min-max"],
                    hoverinfo="x+text",
                ))
        values = [v / 1000.0 for c in shown for v in (*c.distribution.quantiles_us,
                                                       *(x for x in c.distribution.summary_us.values() if x))]
        figure.update_layout(xaxis=_log_axis("latency per inference (ms, log scale)", values),
                             yaxis={"automargin": True, "gridcolor": _GRID}, violingap=0.1,
                             margin={"l": 10, "r": 20, "t": 20, "b": 50})
        caption = (f"Each row pools every session of a combination. Violins with a box (quartiles, median) are drawn "
                   f"from at most {max_points} evenly spaced quantiles of the raw per-inference samples (n in the "
                   "hover), so the page stays small. ")
        if aggregate:
            caption += (f"{aggregate} row(s) come from a tool that prints aggregates only: their box spans p5 to p95, "
                        "whiskers min to max, and there is no shape to draw.")
        return self._make(figure, "Latency distributions", caption, 70 + 24 * len(shown))

    # -- width x resolution heatmaps -------------------------------------------------------------------------------

    def heatmaps(self, combos: Sequence[Combo]) -> list[Figure]:
        groups: dict[tuple[str, str, str], list[Combo]] = defaultdict(list)
        for combo in combos:
            if combo.ok and combo.width is not None and combo.resolution is not None:
                groups[(combo.family or "", combo.format or "", combo.config_label)].append(combo)
        figures = []
        for (family, fmt, config), group in sorted(groups.items()):
            widths = sorted({c.width for c in group if c.width is not None})
            resolutions = sorted({c.resolution for c in group if c.resolution is not None})
            if len(widths) < 2 and len(resolutions) < 2:
                continue
            quants = sorted({c.quant or "?" for c in group}, key=lambda q: list(QUANT_COLORS).index(q)
                            if q in QUANT_COLORS else 99)
            figure = make_subplots(rows=1, cols=len(quants), shared_yaxes=True, horizontal_spacing=0.03,
                                   subplot_titles=[plot_text(q) for q in quants])
            cell = {(c.quant or "?", c.width, c.resolution): c for c in group}
            for column, quant in enumerate(quants, start=1):
                z, text, hover = [], [], []
                for width in widths:
                    z_row, text_row, hover_row = [], [], []
                    for resolution in resolutions:
                        found = cell.get((quant, width, resolution))
                        ms = _ms(found.p50_us) if found else None
                        mark = " ⚠" if found and found.trust_flags("latency") else ""
                        z_row.append(ms)
                        text_row.append("" if ms is None else f"{ms:.3g}{mark}")
                        hover_row.append("not measured" if found is None else plot_text(
                            f"{found.artifact}: p50 {_fmt_ms(found.p50_us)}; flags: "
                            f"{', '.join(found.flags_for('latency')) or 'none'}"))
                    z.append(z_row)
                    text.append(text_row)
                    hover.append(hover_row)
                figure.add_trace(go.Heatmap(
                    z=z, x=[f"{r} px" for r in resolutions], y=[f"α {w:g}" for w in widths], text=text,
                    texttemplate="%{text}", customdata=hover, hovertemplate="%{customdata}<extra></extra>",
                    coloraxis="coloraxis", xgap=2, ygap=2), row=1, col=column)
            figure.update_layout(coloraxis={"colorscale": "Viridis", "colorbar": {"title": {"text": "p50 ms"}}})
            figure.update_xaxes(type="category", title_text="resolution")
            figure.update_yaxes(type="category", title_text="width", col=1)
            title = f"p50 latency by width and resolution: {family} · {fmt} · {config}"
            figures.append(self._make(figure, title, "One panel per quantisation, one colour scale for all panels; "
                                      "⚠ marks a cell whose latency carries a trust flag (see the table).",
                                      90 + 46 * len(widths)))
        return figures

    # -- pareto frontiers ------------------------------------------------------------------------------------------

    def _scatter_by_quant(self, figure: go.Figure, combos: Sequence[Combo], y_of: Any, column: str,
                          row: int | None = None, col: int | None = None, legend: bool = True) -> None:
        by_quant: dict[str, list[Combo]] = defaultdict(list)
        for combo in combos:
            by_quant[combo.quant or "?"].append(combo)
        for quant, group in sorted(by_quant.items()):
            symbols = [FORMAT_SYMBOLS.get(c.format or "", "square") + ("-open" if c.trust_flags("latency", column)
                                                                       else "") for c in group]
            hover = [f"{plot_text(c.label)}<br>{plot_text(f'p50 {_fmt_ms(c.p50_us)}; {_flags_line(c, column)}')}"
                     for c in group]
            trace = go.Scatter(x=[_ms(c.p50_us) for c in group], y=[y_of(c) for c in group], mode="markers",
                               name=plot_text(quant), legendgroup=quant, showlegend=legend,
                               marker={"color": _color(quant), "symbol": symbols, "size": 9, "line": {"width": 1.5}},
                               customdata=hover, hovertemplate="%{customdata}<br>y = %{y:.4g}<extra></extra>")
            figure.add_trace(trace, row=row, col=col) if row else figure.add_trace(trace)

    @staticmethod
    def _frontier_trace(combos: Sequence[Combo], y_of: Any, legend: bool) -> go.Scatter:
        points = [(_ms(c.p50_us) or 0.0, float(y_of(c))) for c in combos]
        front = [points[i] for i in pareto(points)]
        return go.Scatter(x=[p[0] for p in front], y=[p[1] for p in front], mode="lines", name="pareto frontier",
                          legendgroup="frontier", showlegend=legend, hoverinfo="skip",
                          line={"color": "#333", "dash": "dot", "shape": "hv", "width": 1})

    def drift_pareto(self, combos: Sequence[Combo], min_top1: float) -> Figure | None:
        shown = [c for c in combos if c.ok and c.top1_agreement is not None and c.kl_mean is not None]
        if len(shown) < 2:
            return None
        figure = make_subplots(rows=1, cols=2, horizontal_spacing=0.1,
                               subplot_titles=["1 − top-1 agreement with fp32", "mean KL divergence from fp32"])
        for col, y_of, legend in ((1, lambda c: 1.0 - c.top1_agreement, True), (2, lambda c: c.kl_mean, False)):
            self._scatter_by_quant(figure, shown, y_of, "drift", row=1, col=col, legend=legend)
            figure.add_trace(self._frontier_trace(shown, y_of, legend), row=1, col=col)
        figure.add_hline(y=1.0 - min_top1, line={"color": "#d62728", "dash": "dash", "width": 1}, row=1, col=1,
                         annotation_text=f"budget: top-1 agreement ≥ {min_top1:.0%}", annotation_position="top right")
        figure.update_xaxes(**_log_axis("p50 latency (ms, log scale)", [_ms(c.p50_us) for c in shown]))
        figure.update_yaxes(gridcolor=_GRID, zeroline=False, rangemode="tozero")
        return self._make(figure, "Latency vs accuracy drift",
                          "Lower left is better. The dotted line joins the pareto-optimal combinations (nothing else "
                          "is both faster and closer to fp32). Circles: TFLite, diamonds: ONNX; open markers carry "
                          "a trust flag on the latency or the drift. Drift is measured against each variant's own "
                          "fp32 twin, on the first session.", 420)

    def energy_pareto(self, combos: Sequence[Combo]) -> Figure | None:
        shown = [c for c in combos if c.ok and c.energy_per_inference_mj is not None]
        if len(shown) < 2:
            return None
        figure = go.Figure()
        self._scatter_by_quant(figure, shown, lambda c: c.energy_per_inference_mj, "energy")
        figure.add_trace(self._frontier_trace(shown, lambda c: c.energy_per_inference_mj, True))
        figure.update_layout(xaxis=_log_axis("p50 latency (ms, log scale)", [_ms(c.p50_us) for c in shown]),
                             yaxis=_axis("energy per inference (mJ)", rangemode="tozero"))
        return self._make(figure, "Latency vs energy per inference",
                          "Energy per inference = average power over the timed window × window / inferences "
                          "(median over sessions). Open markers carry a trust flag on the latency or the energy "
                          "(e.g. charging).", 400)

    # -- speed-up over fp32 ----------------------------------------------------------------------------------------

    def speedups(self, combos: Sequence[Combo]) -> Figure | None:
        shown = [c for c in combos if c.ok and c.speedup_vs_fp32 is not None and c.quant != "fp32"]
        if not shown:
            return None
        figure = go.Figure()
        by_quant: dict[str, list[Combo]] = defaultdict(list)
        for combo in shown:
            by_quant[combo.quant or "?"].append(combo)
        # Name a bar group by what varies on this device: the architecture, plus format and configuration when
        # more than one occurs (long repeated labels would crowd the axis).
        several_formats = len({c.format for c in shown}) > 1
        several_configs = len({c.config_label for c in shown}) > 1

        def name(c: Combo) -> str:
            parts = [c.architecture] + ([c.format or "?"] if several_formats else []) \
                + ([c.config_label] if several_configs else [])
            return plot_text(" · ".join(parts))

        for quant, group in sorted(by_quant.items(), key=lambda kv: list(QUANT_COLORS).index(kv[0])
                                   if kv[0] in QUANT_COLORS else 99):
            x = [name(c) for c in group]
            y = [round(c.speedup_vs_fp32 or 0.0, 4) for c in group]
            plus = [None if c.speedup_high is None else round(c.speedup_high - (c.speedup_vs_fp32 or 0), 4)
                    for c in group]
            minus = [None if c.speedup_low is None else round((c.speedup_vs_fp32 or 0) - c.speedup_low, 4)
                     for c in group]
            hover = [plot_text(f"{c.artifact}: p50 {_fmt_ms(c.p50_us)}; flags: "
                               f"{', '.join(c.flags_for('latency')) or 'none'}") for c in group]
            figure.add_trace(go.Bar(x=x, y=y, name=plot_text(quant), marker={"color": _color(quant)},
                                    error_y={"type": "data", "array": plus, "arrayminus": minus, "symmetric": False,
                                             "thickness": 1, "width": 3},
                                    customdata=hover, hovertemplate="%{customdata}<br>%{y:.2f}× fp32<extra></extra>"))
        figure.add_hline(y=1.0, line={"color": "#333", "width": 1})
        figure.update_layout(barmode="group", xaxis={"automargin": True, "tickangle": -30},
                             yaxis=_axis("speed-up over fp32 (×)", rangemode="tozero"))
        return self._make(figure, "Speed-up of each quantisation over fp32",
                          "fp32 p50 / this p50, same device, architecture, format and runtime configuration. Error "
                          "bars: the conservative range from the two medians' 95% intervals (fp32 low / this high to "
                          "fp32 high / this low); none where either has no interval.", 420)

    # -- devices side by side --------------------------------------------------------------------------------------

    def devices_side_by_side(self, matrix: Sequence[tuple[str, dict[str, Combo]]],
                             devices: Sequence[str]) -> Figure | None:
        if len(devices) < 2 or not matrix:
            return None
        figure = go.Figure()
        for index, device in enumerate(devices):
            rows = [(variant, cells[device]) for variant, cells in matrix if device in cells]
            figure.add_trace(go.Bar(
                y=[plot_text(v) for v, _ in rows], x=[_ms(c.p50_us) for _, c in rows], orientation="h",
                name=plot_text(device), marker={"color": _PALETTE[index % len(_PALETTE)]},
                customdata=[plot_text(f"{device}: {c.label}; flags: {', '.join(c.flags_for('latency')) or 'none'}")
                            for _, c in rows],
                hovertemplate="%{customdata}<br>p50 %{x:.4g} ms<extra></extra>"))
        values = [_ms(c.p50_us) for _, cells in matrix for c in cells.values()]
        figure.update_layout(barmode="group", xaxis=_log_axis("p50 latency (ms, log scale)", values),
                             yaxis={"automargin": True, "autorange": "reversed"},
                             legend={"orientation": "h", "y": 1.02, "yanchor": "bottom"},
                             margin={"l": 10, "r": 20, "t": 40, "b": 50})
        return self._make(figure, "p50 by device",
                          "p50 of each variant measured on more than one device, with the fastest runtime "
                          "configuration of that thread count on each device (named in the hover).",
                          90 + len(matrix) * (10 + 9 * len(devices)))

    # -- trends ----------------------------------------------------------------------------------------------------

    def trends(self, device: str, lines: Sequence[Trend], marked: bool) -> Figure | None:
        lines = [t for t in lines if len(t.points) >= 2]
        if not lines:
            return None
        figure = go.Figure()
        marks: dict[str, list[tuple[str, float, str]]] = defaultdict(list)
        for trend in lines:
            first = next((p.p50_us for p in trend.points if p.p50_us), None)
            if not first:
                continue
            x = [_run_tick(p.run_id, p.started_at) for p in trend.points]
            y = [round((p.p50_us or math.nan) / first, 4) for p in trend.points]
            hover = ["<br>".join(plot_text(part) for part in (
                trend.label, f"run {p.run_id}: p50 {_fmt_ms(p.p50_us)}",
                *([f"{p.verdict}: {p.detail or ''}"] if p.verdict else []))) for p in trend.points]
            figure.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name=plot_text(trend.label),
                                        line={"width": 1}, marker={"size": 5}, customdata=hover,
                                        hovertemplate="%{customdata}<br>%{y:.3f}× first run<extra></extra>"))
            for point, value in zip(trend.points, y, strict=True):
                if point.verdict in ("regression", "improvement"):
                    marks[point.verdict].append((_run_tick(point.run_id, point.started_at), value, plot_text(
                        f"{point.verdict}: {trend.label}: {point.detail or ''}")))
        style = {"regression": ("x", "#d62728"), "improvement": ("triangle-down", "#2ca02c")}
        for verdict, points in marks.items():
            symbol, color = style[verdict]
            figure.add_trace(go.Scatter(x=[p[0] for p in points], y=[p[1] for p in points], mode="markers",
                                        name=f"{verdict} vs previous run", customdata=[p[2] for p in points],
                                        marker={"symbol": symbol, "size": 13, "color": color,
                                                "line": {"width": 2, "color": color}},
                                        hovertemplate="%{customdata}<extra></extra>"))
        figure.add_hline(y=1.0, line={"color": "#999", "width": 1})
        order = sorted({(p.started_at, p.run_id) for t in lines for p in t.points})
        figure.update_layout(xaxis=_axis("run (start time UTC)", type="category",
                                         categoryorder="array", categoryarray=[_run_tick(r, t) for t, r in order]),
                             yaxis=_axis("p50 relative to the first run shown (×)"),
                             legend={"font": {"size": 10}})
        caption = ("Each line is one variant and runtime configuration, as p50 divided by its p50 in the earliest "
                   "selected run (hover for milliseconds). ")
        caption += ("Marks: the regression check of each run against the one before it (the note at the top of "
                    "this section says how it decides; the hover gives each point's verdict and why)." if marked
                    else "No regression marks: see the note at the top of this section.")
        return self._make(figure, f"Trends across runs: {device}", caption, 460)


def _run_tick(run_id: str, started_at: str) -> str:
    """A run on a category axis: its start (to the minute) and id, e.g. ``11-21 07:10<br>r20261121-071027-80d9``."""
    return f"{plot_text(started_at[5:16].replace('T', ' '))}<br>{plot_text(run_id)}"


_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf")


def _flags_line(combo: Combo, column: str) -> str:
    flags = combo.trust_flags("latency", column)
    return f"flags: {', '.join(flags)}" if flags else "no flags"
