"""``farmbench devices --probe``: connect to a device, push the agent, and describe what the device is."""

from __future__ import annotations

from typing import Any

from farmbench.devices.config import DeviceConfig
from farmbench.errors import FarmbenchError
from farmbench.transports.base import Transport


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
        telemetry = _telemetry(device, session.transport)
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
            **telemetry.pop("summary"),
        },
        "telemetry": telemetry,
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
        telemetry = _telemetry(device, session.transport)
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
            **telemetry.pop("summary"),
        },
        "telemetry": telemetry,
    })
    return report


def _telemetry(device: DeviceConfig, transport: Transport) -> dict[str, Any]:
    """What power and thermal telemetry a run will measure on this device: the watched thermal zones (with the
    temperature now) and the power source with what it reads (rails, RAPL domains, battery node, command), or why
    it cannot. ``summary`` holds the two lines the probe prints."""
    from farmbench.runners.telemetry import DeviceTelemetry

    telemetry = DeviceTelemetry(device, transport)
    telemetry.prepare()
    zones = [{"zone": z.zone, "type": z.type, "temp_c": z.temp_c} for z in telemetry.watched]
    shown = ", ".join(f"{z.type} {z.temp_c:.1f} C" if z.temp_c is not None else f"{z.type} ?"
                      for z in telemetry.watched[:6])
    more = f" (+{len(telemetry.watched) - 6} more)" if len(telemetry.watched) > 6 else ""
    gate = "cooldown gate on" if telemetry.gate_on else "no [thermal] table: temperatures recorded, no cooldown wait"
    thermal_line = f"{shown}{more}; {gate}" if zones else f"no thermal zones matched; {gate}"
    document: dict[str, Any] = {"thermal_zones": zones, "cooldown_gate": telemetry.gate_on,
                                "notes": list(telemetry.notes)}
    config, plan = telemetry.power_config, telemetry.plan
    if config is None:
        power_line = "none configured (add a [power] table to measure energy per inference)"
    elif plan is None or not telemetry.power_on:
        power_line = f"{config.source}: unavailable: {(telemetry.power_error or 'unknown').splitlines()[0]}"
        document["power_error"] = telemetry.power_error
    elif missing := _unreadable(transport, [channel.path for channel in plan.channels
                                            if not channel.name.startswith(("power.online.", "power.status"))]):
        power_line = f"{config.source}: unavailable: cannot read {', '.join(missing)}"
        document["power_error"] = power_line
    else:
        reads = [rail.label for rail in plan.rails] or [domain.name for domain in plan.domains]
        if plan.command:
            reads = [f"command {plan.command!r}"]
        if not reads:
            reads = [channel.path for channel in plan.channels[:2]]
        power_line = (f"{config.source} ({', '.join(reads)}) at {config.rate_hz:g} Hz;"
                      f" timed runs >= {config.min_window_s:g} s")
        document.update(power_source=config.source, reads=reads, notes=[*document["notes"], *plan.notes])
    document["summary"] = {"thermal": thermal_line, "power": power_line}
    return document


def _unreadable(transport: Transport, paths: list[str]) -> list[str]:
    """The files among ``paths`` this device will not let the sampler read (missing, or root-only)."""
    if not paths:
        return []
    completed = transport.run(["sh", "-c", 'for f in "$@"; do cat "$f" >/dev/null 2>&1 || echo "$f"; done', "sh",
                               *paths], timeout_s=30)
    return [line for line in completed.stdout.splitlines() if line.strip()]
