"""``farmbench devices``: can each device be used right now, and in what state is it?

Every device is checked in its own thread, all at once, each bounded by its own ``connect_timeout_s`` and all of
them together by ``timeout_s``. A check connects the way a run does (:func:`farmbench.runners.board.open_transport`,
so keys, agent, ssh_config and known_hosts behave the same), then runs one short shell command that reads the
battery, the thermal zones and whether farmbench is already busy there. Statuses:

``online``
    connected and nothing of farmbench's is running there.
``offline``
    not reachable: refused, no route, unknown name, no answer within the timeout, no ADB handshake.
``unauthorized``
    reached, but it will not let us in: the SSH server refused our keys / password; the board's host key is not in
    known_hosts (``host key unknown``) or differs from it (``host key changed``); the phone did not accept the ADB
    key (nobody tapped "Allow", or it was refused).
``busy``
    usable, but something else holds it now, so measurements would contend or fail:

    * an SSH board or this machine: a farmbench agent process is running from the device's work directory
      (``<cache_dir>/<hash>/agent.py``, any user's process whose command line says so). That is exactly while a
      measurement (or a probe) is running; between two measurements of a run the device reads ``online``.
    * a phone: another farmbench command is running on it (every command farmbench runs on a phone registers its
      PID under ``/data/local/tmp/farmbench/pids`` until it ends; a live PID there that is not ours), or, over USB,
      the interface is claimed by another program, usually a running adb server (``adb kill-server``).
``error``
    anything else: a device file farmbench cannot use (a key_file that does not exist), or a device that connects
    but does not answer a command in time.

Battery (level and status: the ``power_supply`` class under the device's ``sysfs_root``, on phones falling back to
``dumpsys battery``) and the hottest thermal zone (``<sysfs_root>/class/thermal/thermal_zone*``) are shown where the
device has them.
"""

from __future__ import annotations

import posixpath
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from farmbench.devices.config import DeviceConfig
from farmbench.errors import (
    AuthError,
    CommandTimeoutError,
    ConfigError,
    ConnectError,
    FarmbenchError,
    HostKeyError,
)
from farmbench.telemetry.sampler import parse_file_listing, read_files_script
from farmbench.telemetry.thermal import temp_c_from_sysfs
from farmbench.transports.base import Transport

STATUSES = ("online", "offline", "unauthorized", "busy", "error")
DEFAULT_TIMEOUT_S = 30.0
"""How long ``farmbench devices`` waits for all devices together."""
STATUS_COMMAND_TIMEOUT_S = 10.0
"""The one command that reads battery, zones and what is running."""
DUMPSYS_TIMEOUT_S = 5.0

# $1: the device's work directory ("" = the default the agent runner uses). Prints one line per process running a
# farmbench agent from it: "B<TAB>pid<TAB>command line". grep finds the candidates without a process per /proc
# entry; our own shell (whose arguments end with the bare directory, never "<dir>/.../agent.py") is skipped anyway.
_AGENT_BUSY_SCRIPT = r"""
c=${1:-${XDG_CACHE_HOME:-$HOME/.cache}/farmbench}
for f in $(grep -lF -e "$c/" /proc/[0-9]*/cmdline 2>/dev/null); do
  p=${f#/proc/}; p=${p%/cmdline}
  [ "$p" = "$$" ] && continue
  a=$(tr '\0' ' ' <"$f" 2>/dev/null) || continue
  case "$a" in *"$c"/*/agent.py*) printf 'B\t%s\t%s\n' "$p" "$a";; esac
done
exit 0
"""

# $1: the PID directory. A PID file whose process is alive and is not our own command (this shell, or the wrapper
# shell that registered it) means another farmbench command is running on the phone.
_PHONE_BUSY_SCRIPT = r"""
for f in "$1"/*; do
  [ -f "$f" ] || continue
  p=$(cat "$f" 2>/dev/null)
  case "$p" in ''|*[!0-9]*) continue;; esac
  if [ "$p" = "$$" ] || [ "$p" = "$PPID" ]; then continue; fi
  [ -d "/proc/$p" ] || continue
  a=$(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null)
  printf 'B\t%s\t%s\n' "$p" "$a"
done
exit 0
"""

# dumpsys battery's status codes (BatteryManager.BATTERY_STATUS_*).
_DUMPSYS_STATUS = {"1": "Unknown", "2": "Charging", "3": "Discharging", "4": "Not charging", "5": "Full"}
_BUSY_COMMAND_CHARS = 160


@dataclass(frozen=True)
class DeviceHealth:
    """One device's state now. ``reason`` is one line (what is wrong); ``message`` and ``hint`` are the full error
    and what to do. Temperatures are °C, the battery level is percent."""

    name: str
    kind: str
    address: str
    status: str
    reason: str = ""
    message: str = ""
    hint: str = ""
    battery_percent: int | None = None
    battery_status: str | None = None
    battery_temp_c: float | None = None
    max_temp_c: float | None = None
    max_temp_zone: str | None = None
    busy_with: tuple[str, ...] = ()
    elapsed_s: float = 0.0
    notes: tuple[str, ...] = field(default=())

    @property
    def online(self) -> bool:
        return self.status == "online"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "kind": self.kind, "address": self.address, "status": self.status,
            "reason": self.reason or None, "message": self.message or None, "hint": self.hint or None,
            "battery_percent": self.battery_percent, "battery_status": self.battery_status,
            "battery_temp_c": self.battery_temp_c, "max_temp_c": self.max_temp_c, "max_temp_zone": self.max_temp_zone,
            "busy_with": list(self.busy_with), "elapsed_s": round(self.elapsed_s, 3), "notes": list(self.notes),
        }


def address_of(device: DeviceConfig) -> str:
    """Where the device is, as its file says (ssh_config may still change host and port when connecting)."""
    values = device.values
    if device.kind == "ssh":
        user = f"{values['user']}@" if values.get("user") else ""
        port = f":{values['port']}" if values.get("port") else ""
        return f"{user}{values.get('host')}{port}"
    if device.kind == "adb":
        if values.get("serial"):
            return f"usb:{values['serial']}"
        return f"{values.get('host')}:{values.get('port') or 5555}"
    return "this machine"


def check_devices(devices: Sequence[DeviceConfig], *, accept_new_host_key: bool = False,
                  timeout_s: float = DEFAULT_TIMEOUT_S) -> list[DeviceHealth]:
    """Check every device in parallel; in the order given. A device still connecting after ``timeout_s`` is
    reported offline (its thread is left to finish on its own: it is a daemon and touches nothing shared)."""
    results: dict[int, DeviceHealth] = {}
    lock = threading.Lock()

    def work(index: int, device: DeviceConfig) -> None:
        health = check_device(device, accept_new_host_key=accept_new_host_key)
        with lock:
            results[index] = health

    threads = [threading.Thread(target=work, args=(index, device), daemon=True, name=f"health-{device.name}")
               for index, device in enumerate(devices)]
    started_s = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, timeout_s - (time.monotonic() - started_s)))
    out = []
    with lock:
        for index, device in enumerate(devices):
            out.append(results.get(index) or DeviceHealth(
                device.name, device.kind, address_of(device), "offline",
                reason=f"no answer within {timeout_s:g} s",
                message=f"{device.name} ({address_of(device)}): the check did not finish within {timeout_s:g} s",
                hint="check the device's network and power; raise --timeout-s for slow links",
                elapsed_s=time.monotonic() - started_s))
    return out


def check_device(device: DeviceConfig, *, accept_new_host_key: bool = False) -> DeviceHealth:
    """Connect to one device and read its state. Never raises for a device problem: that is the status."""
    from farmbench.runners.board import open_transport

    started_s = time.monotonic()
    base = DeviceHealth(device.name, device.kind, address_of(device), "online")
    connecting = device
    if device.kind == "adb":
        # A health check does not wait 30 s for someone to tap "Allow": a phone still asking is unauthorized now.
        values = device.values
        auth_timeout_s = min(float(values.get("auth_timeout_s") or 30.0), float(values.get("connect_timeout_s") or 10.0))
        connecting = replace(device, values={**values, "auth_timeout_s": auth_timeout_s})
    try:
        transport = open_transport(connecting, accept_new_host_key=accept_new_host_key)
    except FarmbenchError as exc:
        return _failure(base, exc, started_s)
    try:
        return replace(_observe(device, transport, base), elapsed_s=time.monotonic() - started_s)
    except FarmbenchError as exc:
        return _failure(base, exc, started_s)
    finally:
        transport.close()


def _failure(base: DeviceHealth, exc: FarmbenchError, started_s: float) -> DeviceHealth:
    status, reason = classify(exc, base.kind)
    return replace(base, status=status, reason=reason, message=exc.message, hint=exc.hint or "",
                   elapsed_s=time.monotonic() - started_s)


def classify(exc: FarmbenchError, kind: str) -> tuple[str, str]:
    """(status, one-line reason) for an error from connecting to or talking to a device."""
    from farmbench.transports.adb import AdbUnauthorizedError

    if isinstance(exc, ConnectError) and exc.busy:
        return "busy", "USB interface claimed by another program (an adb server?)"
    if isinstance(exc, HostKeyError):
        return "unauthorized", {"changed": "host key changed (differs from known_hosts)",
                                "unknown": "host key unknown (not in known_hosts)",
                                "unreadable": "known_hosts unreadable"}.get(exc.problem, "host key refused")
    if isinstance(exc, AdbUnauthorizedError):
        return "unauthorized", "ADB key not accepted (allow it on the phone)"
    if isinstance(exc, AuthError):
        return "unauthorized", "ADB authentication failed" if kind == "adb" else "SSH authentication failed"
    if isinstance(exc, ConnectError):
        return "offline", _first_line(exc.message)
    if isinstance(exc, ConfigError):
        return "error", "device file: " + _first_line(exc.message)
    if isinstance(exc, CommandTimeoutError):
        return "error", "connected, but a command did not finish in time"
    return "error", _first_line(exc.message)


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


def status_script(device: DeviceConfig) -> str:
    """The one command a check runs: battery and zone files (see read_files_script), then what holds the device."""
    root = device.sysfs_root.rstrip("/")
    supply, zone = f"{root}/class/power_supply/*", f"{root}/class/thermal/thermal_zone*"
    listing = read_files_script([f"{supply}/type", f"{supply}/capacity", f"{supply}/status", f"{supply}/temp",
                                 f"{zone}/type", f"{zone}/temp"])
    return listing + (_PHONE_BUSY_SCRIPT if device.kind == "adb" else _AGENT_BUSY_SCRIPT)


def _observe(device: DeviceConfig, transport: Transport, base: DeviceHealth) -> DeviceHealth:
    """Battery, hottest zone and busy-ness over a connected transport."""
    if device.kind == "adb":
        from farmbench.transports.adb import PID_DIR

        argument = PID_DIR  # where the ADB transport registers every command's PID while it runs
    else:
        # The agent runner's work directory: the file's cache_dir, else the device's own default (the script works
        # it out there, as Transport.default_cache_dir does).
        argument = str(device.get("cache_dir") or "").rstrip("/")
    completed = transport.run(["sh", "-c", status_script(device), "sh", argument], timeout_s=STATUS_COMMAND_TIMEOUT_S)
    notes: list[str] = []
    if completed.rc != 0:
        notes.append(f"status command exited {completed.rc}: {_first_line(completed.stderr or completed.stdout)}")
    listed = parse_file_listing(completed.stdout)
    battery = _battery(listed)
    if battery is None and device.kind == "adb":
        battery = _dumpsys_battery(transport, notes)
    zone_type, temp_c = _hottest_zone(listed)
    busy = tuple(_busy_lines(completed.stdout))
    health = replace(base, max_temp_c=temp_c, max_temp_zone=zone_type, busy_with=busy, notes=tuple(notes))
    if battery is not None:
        health = replace(health, battery_percent=battery[0], battery_status=battery[1], battery_temp_c=battery[2])
    if busy:
        what = "another farmbench command is running on the phone" if device.kind == "adb" else \
            "a farmbench agent is running there"
        health = replace(health, status="busy", reason=f"{what} (pid {', '.join(line.split()[0] for line in busy)})",
                         hint="wait for the other run to finish, or stop it")
    return health


# How the ADB transport's PID-registering wrapper looks in a process list: `sh -c WRAPPER sh PIDFILE COMMAND`.
_PHONE_WRAPPER = re.compile(r'^sh -c echo \$\$ > "\$1"; eval "\$2" sh \S+ ')


def _busy_lines(stdout: str) -> list[str]:
    """"pid command" for each process holding the device, the ADB wrapper's own words left out."""
    lines = []
    for line in stdout.splitlines():
        parts = line.split("\t", 2)
        if len(parts) == 3 and parts[0] == "B" and parts[1].isdigit():
            command = _PHONE_WRAPPER.sub("", parts[2].strip())
            if len(command) > _BUSY_COMMAND_CHARS:
                command = command[:_BUSY_COMMAND_CHARS] + "..."
            lines.append(f"{parts[1]} {command}")
    return lines


def _by_directory(listed: dict[str, Any], klass: str) -> dict[str, dict[str, str | None]]:
    """The listed files of ``<anything>/class/<klass>/<entry>/<file>``, grouped by entry directory. Matched by
    shape, not by the sysfs root: a device may print the paths its way (the emulator prints its sandbox's)."""
    out: dict[str, dict[str, str | None]] = {}
    for path, entry in listed.items():
        directory = posixpath.dirname(path)
        parent = posixpath.dirname(directory)
        if posixpath.basename(parent) == klass and posixpath.basename(posixpath.dirname(parent)) == "class":
            out.setdefault(directory, {})[posixpath.basename(path)] = entry.value
    return out


def _battery(listed: dict[str, Any]) -> tuple[int, str | None, float | None] | None:
    """(level %, status, temperature °C) of the device's battery supply, if it has one with a readable capacity.
    Prefers a supply called "battery" (phones), then one of type Battery (BAT0 on laptops and some boards)."""
    supplies = _by_directory(listed, "power_supply")
    candidates = [(directory, entries) for directory, entries in sorted(supplies.items())
                  if (entries.get("capacity") or "").strip().lstrip("-").isdigit()
                  and (entries.get("type") or "Battery").lower() == "battery"]
    if not candidates:
        return None
    candidates.sort(key=lambda item: posixpath.basename(item[0]) != "battery")
    _directory, entries = candidates[0]
    temp = entries.get("temp")
    # power_supply reports temp in tenths of a degree (ABI: 0.1 °C).
    temp_c = int(temp) / 10.0 if temp and temp.lstrip("-").isdigit() else None
    return int(entries["capacity"] or 0), entries.get("status"), temp_c


def _dumpsys_battery(transport: Transport, notes: list[str]) -> tuple[int, str | None, float | None] | None:
    """``dumpsys battery`` on phones whose power_supply files are not readable to the shell user."""
    try:
        completed = transport.run(["dumpsys", "battery"], timeout_s=DUMPSYS_TIMEOUT_S)
    except FarmbenchError as exc:
        notes.append(f"dumpsys battery: {_first_line(exc.message)}")
        return None
    if completed.rc != 0:
        return None
    fields = dict(re.findall(r"^\s*([a-zA-Z ]+):\s*(\S.*?)\s*$", completed.stdout, flags=re.MULTILINE))
    level = fields.get("level", "")
    if not level.isdigit():
        return None
    temp = fields.get("temperature", "")
    temp_c = int(temp) / 10.0 if temp.lstrip("-").isdigit() else None
    return int(level), _DUMPSYS_STATUS.get(fields.get("status", ""), fields.get("status")), temp_c


def _hottest_zone(listed: dict[str, Any]) -> tuple[str | None, float | None]:
    best: tuple[str | None, float | None] = (None, None)
    for directory, entries in sorted(_by_directory(listed, "thermal").items()):
        temp_c = temp_c_from_sysfs(entries.get("temp"))
        if temp_c is not None and (best[1] is None or temp_c > best[1]):
            best = (entries.get("type") or posixpath.basename(directory), temp_c)
    return best
