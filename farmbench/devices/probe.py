"""``farmbench devices --probe``: connect to a device, push the agent, and describe what the device is."""

from __future__ import annotations

from typing import Any

from farmbench.devices.config import DeviceConfig
from farmbench.errors import FarmbenchError


def probe_device(device: DeviceConfig, *, accept_new_host_key: bool = False) -> dict[str, Any]:
    """A JSON-ready description; an unreachable device is a report with status and error, not an exception."""
    from farmbench.runners.board import BoardSession, open_transport

    report: dict[str, Any] = {"name": device.name, "kind": device.kind, "source": device.source}
    if device.kind == "adb":
        return _probe_phone(device, report)
    try:
        session = BoardSession(device, open_transport(device, accept_new_host_key=accept_new_host_key))
    except FarmbenchError as exc:
        return {**report, "status": "unreachable", "error": exc.format()}
    try:
        probe = session.prepare()
        report["identity"] = session.identity()
    except FarmbenchError as exc:
        return {**report, "status": "unusable", "error": exc.format()}
    finally:
        session.close()
    platform = probe.get("platform") or {}
    governors = sorted({str(p.get("governor")) for p in probe.get("cpufreq") or [] if p.get("governor")})
    runtimes = []
    for runtime in probe.get("runtimes", []):
        if runtime.get("usable"):
            runtimes.append(f"{runtime['name']} {runtime.get('version')}")
        elif runtime.get("importable"):
            runtimes.append(f"{runtime['name']} {runtime.get('version')} (unusable: {runtime.get('problem_class')})")
    free = probe.get("work_dir_free_bytes")
    report.update({
        "status": "reachable",
        "probe": probe,
        "summary": {
            "os": probe.get("os_release"),
            "kernel": platform.get("release"),
            "arch": probe.get("arch"),
            "cpu": f"{(probe.get('cpu') or {}).get('model')} x{probe.get('logical_cores')}",
            "governors": ", ".join(governors) or "n/a (no cpufreq)",
            "python": probe.get("python_version"),
            "runtimes": ", ".join(runtimes) or "none",
            "free disk": f"{free / 2**30:.1f} GiB in {probe.get('work_dir')}" if free else "unknown",
        },
    })
    return report


def _probe_phone(device: DeviceConfig, report: dict[str, Any]) -> dict[str, Any]:
    from farmbench.runners.board import open_transport
    from farmbench.runners.phone import PhoneSession

    try:
        session = PhoneSession(device, open_transport(device))
    except FarmbenchError as exc:
        return {**report, "status": "unreachable", "error": exc.format()}
    try:
        session.prepare()
        report["identity"] = session.identity()
    except FarmbenchError as exc:
        return {**report, "status": "unusable", "error": exc.format()}
    finally:
        session.close()
    context = session.context()
    clusters = ", ".join(f"cpus {c['cpus']} @ {c['max_freq_khz'] / 1000:.0f} MHz"
                         for c in context.get("cpu_clusters") or [])
    battery = context.get("battery") or {}
    report.update({
        "status": "reachable",
        "probe": session.probe,
        "summary": {
            "model": f"{context.get('manufacturer')} {context.get('model')}",
            "soc": context.get("soc") or "unknown",
            "android": f"{context.get('release')} (SDK {context.get('sdk')})",
            "build": context.get("build_fingerprint") or "unknown",
            "abi": context.get("abi"),
            "cpu": clusters or "no cpufreq",
            "battery": f"{battery.get('capacity', '?')}% {battery.get('status', '')},"
                       f" {int(battery['temp']) / 10:.1f} C" if battery.get("temp", "").lstrip("-").isdigit()
                       else str(battery or "unknown"),
            "rooted": "yes" if context.get("rooted") else "no",
            "binary": session.binary_path or "no benchmark_model configured",
            "onnx": session.ort_perf_test_path or "no onnxruntime_perf_test configured (ONNX files are skipped)",
        },
    })
    return report
