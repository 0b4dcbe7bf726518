"""``farmbench devices --probe``: connect to a device, push the agent, and describe what the device is."""

from __future__ import annotations

from typing import Any

from farmbench.devices.config import DeviceConfig
from farmbench.errors import FarmbenchError


def probe_device(device: DeviceConfig, *, accept_new_host_key: bool = False) -> dict[str, Any]:
    """A JSON-ready description; an unreachable device is a report with status and error, not an exception."""
    from farmbench.runners.board import BoardSession, open_transport

    report: dict[str, Any] = {"name": device.name, "kind": device.kind, "source": device.source}
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
