"""What a regression check writes: the terminal table, a markdown summary for CI comments and JUnit XML.

JUnit: one ``<testcase>`` per matched measurement (classname ``farmbench.<device>``, name ``<variant> [<runtime
configuration>]``), its metrics in ``<system-out>``. A blocking result (a regression; a model that ran in the
baseline and fails now) is a ``<failure>`` whose ``type`` is the verdict; a candidate measurement lost to a device
that could not be reached is an ``<error>``; a measurement not compared at all -- refused (the message names the
field), new, gone, failed on both sides -- is ``<skipped>``. Everything else passes.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Sequence

from farmbench.results.compare import (
    DRIFT,
    ENERGY,
    FAILED,
    IMPROVEMENT,
    LATENCY,
    REFUSED,
    REGRESSION,
    UNCHANGED,
    VERDICTS,
    Comparison,
    MatchKey,
    MetricResult,
)
from farmbench.ui import table

_HEADERS = ("verdict", "device", "variant", "config", "metric", "baseline", "candidate", "change", "p (samples/sess)",
            "detail")
_NOTABLE_FIRST = (REGRESSION, FAILED, IMPROVEMENT, REFUSED, "new", "gone", UNCHANGED)


def _value(result: MetricResult, value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return ""
    if result.metric == LATENCY:
        return f"{value / 1000:.3f} ms"
    if result.metric == ENERGY:
        return f"{value:.4f} mJ"
    return f"{value:.1f}%"


def _change(result: MetricResult) -> str:
    if result.metric == DRIFT and result.change_abs is not None:
        return f"{result.change_abs:+.2f} pt"
    return "" if result.change_pct is None else f"{result.change_pct:+.1f}%"


def _p(result: MetricResult) -> str:
    parts = ["<1e-99" if p < 1e-99 else f"{p:.2g}" for p in (result.p_value, result.session_p_value) if p is not None]
    return " / ".join(parts)


def verdict_label(result: MetricResult) -> str:
    """The verdict, with the trust flags of either side beside it, e.g. ``regression [high_cv, throttled]``."""
    label = result.verdict
    if result.aggregate_only and result.metric == LATENCY:
        label += " (session means)"
    return f"{label} [{', '.join(result.flags)}]" if result.flags else label


def detail(result: MetricResult) -> str:
    """The reason and notes of a result, on one line."""
    parts = [result.reason] if result.reason else []
    parts += list(result.notes)
    return "; ".join(parts)


def _ordered(comparison: Comparison) -> list[MetricResult]:
    return sorted(comparison.results, key=lambda r: _NOTABLE_FIRST.index(r.verdict))


def _row(result: MetricResult) -> tuple[str, ...]:
    key = result.key
    return (verdict_label(result), key.device, key.variant, key.config_label, result.metric,
            _value(result, result.baseline_median), _value(result, result.candidate_median), _change(result),
            _p(result), detail(result))


def summary_line(comparison: Comparison) -> str:
    counts = comparison.counts()
    words = ", ".join(f"{counts[v]} {v}" for v in VERDICTS if counts[v])
    outcome = {3: "FAIL", 1: "DEVICE FAILURE", 0: "OK"}.get(comparison.exit_code, "?")
    return (f"{outcome}: candidate {comparison.candidate_run_id} against {comparison.baseline_ref}"
            f" ({comparison.baseline_run_id}): {words or 'nothing to compare'}")


def thresholds_line(comparison: Comparison) -> str:
    t = comparison.thresholds
    return (f"alpha {t.alpha:g}; latency > {t.latency_threshold_pct:g}% and > {t.latency_floor_us:g} us;"
            f" energy > {t.energy_threshold_pct:g}% and > {t.energy_floor_mj:g} mJ;"
            f" top-1 agreement > {t.drift_top1_points:g} points")


def format_table(comparison: Comparison) -> str:
    """The terminal report: notable results first, then the unchanged ones, and a summary line."""
    rows = [_row(r) for r in _ordered(comparison)]
    lines = [table(_HEADERS, rows, right=(5, 6, 7)) if rows else "no measurements to compare", ""]
    lines += [f"note: {note}" for note in comparison.notes]
    lines += [f"thresholds: {thresholds_line(comparison)}", summary_line(comparison)]
    return "\n".join(lines)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_table(results: Sequence[MetricResult]) -> list[str]:
    lines = ["| " + " | ".join(_HEADERS) + " |", "|" + "---|" * len(_HEADERS)]
    for result in results:
        lines.append("| " + " | ".join(_md_cell(cell) for cell in _row(result)) + " |")
    return lines


def markdown_summary(comparison: Comparison) -> str:
    """A markdown summary for a CI comment: the outcome, what needs attention, the unchanged results folded."""
    counts = comparison.counts()
    notable = [r for r in _ordered(comparison) if r.verdict != UNCHANGED]
    unchanged = comparison.by_verdict(UNCHANGED)
    outcome = {3: "regressions found", 1: "a device failed", 0: "no regressions"}.get(comparison.exit_code, "")
    lines = [f"## farmbench check: {outcome}", "",
             (f"Candidate `{comparison.candidate_run_id}` ({comparison.candidate_started_at}) against"
              f" {comparison.baseline_ref}: `{comparison.baseline_run_id}` ({comparison.baseline_started_at}),"
              f" sweep `{comparison.sweep_name}`."), "",
             " · ".join(f"**{counts[v]}** {v}" for v in VERDICTS if counts[v]) or "Nothing to compare.", ""]
    lines += [f"> {note}" for note in comparison.notes]
    if comparison.notes:
        lines.append("")
    if notable:
        lines += _md_table(notable) + [""]
    if unchanged:
        lines += [f"<details><summary>{len(unchanged)} unchanged</summary>", ""] + _md_table(unchanged)
        lines += ["", "</details>", ""]
    lines.append(f"Thresholds: {thresholds_line(comparison)}. A latency change also needs Mann-Whitney U on the raw"
                 " samples below alpha and the sessions to show a change beyond the threshold (session p below"
                 " alpha); see `farmbench check --help`.")
    return "\n".join(lines) + "\n"


def _testcase_outcome(results: Sequence[MetricResult]) -> tuple[str, str, str] | None:
    """(element, type, message) for a testcase's results, or None when it passes."""
    blocking = [r for r in results if r.blocking]
    if blocking:
        message = "; ".join(f"{r.metric} {r.verdict}: {detail(r)}" for r in blocking)
        return "failure", blocking[0].verdict, message
    lost = [r for r in results if r.verdict == FAILED and r.transient and r.baseline_sessions]
    if lost:
        return "error", "device_failure", "; ".join(f"{r.metric}: {detail(r)}" for r in lost)
    if all(r.verdict not in (REGRESSION, IMPROVEMENT, UNCHANGED) for r in results):
        first = results[0]
        if first.verdict == REFUSED:
            return "skipped", REFUSED, f"refused: {first.refused_field} differs ({first.reason})"
        return "skipped", first.verdict, f"{first.verdict}: {detail(first)}"
    return None


def _case_name(key: MatchKey) -> str:
    return f"{key.variant} [{key.config_label}]"


def junit_xml(comparison: Comparison) -> str:
    """JUnit XML (the schema Jenkins, GitLab and GitHub test reporters read)."""
    matches = comparison.matches()
    outcomes = [(key, results, _testcase_outcome(results)) for key, results in matches]
    failures = sum(1 for _, _, o in outcomes if o is not None and o[0] == "failure")
    errors = sum(1 for _, _, o in outcomes if o is not None and o[0] == "error")
    skipped = sum(1 for _, _, o in outcomes if o is not None and o[0] == "skipped")
    totals = {"tests": str(len(outcomes)), "failures": str(failures), "errors": str(errors), "skipped": str(skipped)}
    root = ET.Element("testsuites", {"name": "farmbench check", **totals})
    suite = ET.SubElement(root, "testsuite", {"name": f"farmbench check {comparison.sweep_name}".strip(), **totals,
                                              "timestamp": comparison.candidate_started_at.rstrip("Z"), "time": "0"})
    properties = ET.SubElement(suite, "properties")
    for name, value in (("baseline_run", comparison.baseline_run_id), ("baseline_ref", comparison.baseline_ref),
                        ("candidate_run", comparison.candidate_run_id),
                        ("thresholds", thresholds_line(comparison)), ("exit_code", str(comparison.exit_code))):
        ET.SubElement(properties, "property", {"name": name, "value": value})
    for key, results, outcome in outcomes:
        case = ET.SubElement(suite, "testcase", {"classname": f"farmbench.{key.device}", "name": _case_name(key),
                                                 "time": "0"})
        if outcome is not None:
            element, kind, message = outcome
            node = ET.SubElement(case, element, {"type": kind, "message": message[:1000]})
            if element != "skipped":
                node.text = message
        out = ET.SubElement(case, "system-out")
        out.text = "\n".join(
            f"{r.metric}: {verdict_label(r)}; baseline {_value(r, r.baseline_median) or '-'}, candidate"
            f" {_value(r, r.candidate_median) or '-'} {_change(r)}; {detail(r)}" for r in results)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"
