"""Device files (``device_configs/*.toml``) and ad-hoc device URLs.

A device is named on the command line or in a sweep's ``[run] devices`` as one of:

* ``local`` -- this machine (a built-in device; a ``local.toml`` in the device directory overrides it)
* ``ssh://[user@]host[:port]`` -- a Linux board over SSH, with keys, agent, ``~/.ssh/config`` and known_hosts
* a name -- ``<device dir>/<name>.toml``, the device dir being ``$FARMBENCH_DEVICE_DIR`` or ``./device_configs``
* a path to a ``.toml`` file

Every key is described in ``DEVICE_FIELDS``; unknown keys, wrong types and missing fields are errors that name
file, line and key (exit 2), like sweep files. Two optional tables configure telemetry: ``[power]`` (a power source,
see :mod:`farmbench.telemetry.power`) and ``[thermal]`` (zones and the cooldown gate, see
:mod:`farmbench.telemetry.thermal`). An ``android-battery`` source without ``calibration`` uses the state file
``<device file name>.power.toml`` next to the device file (what ``farmbench calibrate-power`` writes) when it exists.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from farmbench.config import Field, TomlDocument, reject_unknown_keys, validate_table
from farmbench.errors import ConfigError, UsageError
from farmbench.telemetry.power import PowerConfig, load_power_table
from farmbench.telemetry.thermal import ThermalConfig, load_thermal_table

KINDS = ("local", "ssh", "adb")

DEVICE_FIELDS: tuple[Field, ...] = (
    Field("name", "str", doc="device name in results and reports (default: the file name)"),
    Field("kind", "str", required=True, choices=KINDS,
          doc="local (this machine), ssh (Linux board), adb (Android phone: TCP host/port or USB serial)"),
    Field("description", "str", default="", doc="free text shown by `farmbench devices`"),
    Field("identity", "str",
          doc="a fixed identity for this device's results (default: found by probing: /etc/machine-id and host name"
              " on boards, the serial on phones); set it when boards cloned from one SD-card image share a"
              " machine-id and host name, or several device files reach one machine"),
    # SSH boards
    Field("host", "str", doc="ssh: host name, address, or a Host alias from ~/.ssh/config"),
    Field("port", "int", min_value=1, doc="ssh: port (default: from ~/.ssh/config, else 22)"),
    Field("user", "str", doc="ssh: user (default: from ~/.ssh/config, else your user name)"),
    Field("key_file", "path",
          doc="ssh: private key (default: ssh-agent, then ~/.ssh/id_*); adb: RSA key (default ~/.android/adbkey)"),
    Field("key_passphrase", "str", secret=True,
          doc="ssh: passphrase of an encrypted key_file (prefer ssh-agent; kept out of results, logs and reports)"),
    Field("password", "str", secret=True,
          doc="ssh: password, for boards without key login (prefer keys; kept out of results, logs and reports)"),
    # Android phones
    Field("serial", "str", doc="adb: USB serial (see `adb devices`); use host/port for ADB over TCP"),
    Field("benchmark_model", "path",
          doc="adb: LiteRT's prebuilt benchmark_model binary for the phone's ABI, on this machine (pushed once)"),
    Field("onnxruntime_perf_test", "path",
          doc="adb: ONNX Runtime's onnxruntime_perf_test binary for the phone's ABI, on this machine (pushed once);"
              " without it ONNX files are skipped on the phone"),
    Field("device_dir", "str", default="/data/local/tmp/farmbench", doc="adb: where models go on the phone"),
    Field("auth_timeout_s", "float", default=30.0, min_exclusive=0,
          doc="adb: how long to wait for the phone to accept farmbench's key (someone taps Allow on the phone)"),
    Field("read_timeout_s", "float", default=10.0, min_exclusive=0,
          doc="adb: give up when a transfer or command is silent this long (long benchmarks raise it)"),
    Field("known_hosts", "path", doc="ssh: known_hosts file (default ~/.ssh/known_hosts)"),
    Field("ssh_config", "path", doc="ssh: ssh_config file (default ~/.ssh/config when present)"),
    Field("accept_new_host_key", "bool", default=False,
          doc="ssh: on first contact, record the board's host key in known_hosts (a changed key is always refused)"),
    Field("connect_timeout_s", "float", default=10.0, min_exclusive=0, doc="give up connecting after this"),
    # Boards and the host
    Field("python", "str",
          doc="Python 3.8+ on the device that runs the agent (default: python3; for local, farmbench's own Python)"),
    Field("cache_dir", "str", default="",
          doc="where farmbench keeps models and the agent on the device (default ~/.cache/farmbench there)"),
    Field("runtimes", "str_list", default=(),
          choices=("litert", "tflite_runtime", "tensorflow", "onnxruntime"),
          doc="runtimes allowed on this device (default: whichever import there)"),
    # Telemetry
    Field("sysfs_root", "str", default="/sys",
          doc="where the device's sysfs is: power supplies, hwmon, powercap, thermal zones and cpufreq are read"
              " under it (default /sys; a directory of files stands in for it in tests)"),
)

TELEMETRY_TABLES = ("power", "thermal")
"""Tables of a device file beside its keys."""

# Characters a sysfs root may contain: it ends up in shell globs that list zones and rails.
_SYSFS_ROOT = re.compile(r"/[A-Za-z0-9_./+:-]*")


@dataclass(frozen=True)
class DeviceConfig:
    name: str
    kind: str
    source: str  # the file, "built-in" or the URL it came from
    values: dict[str, Any] = field(default_factory=dict)
    power: PowerConfig | None = None  # the [power] table; None: power is not measured on this device
    thermal: ThermalConfig | None = None  # the [thermal] table; None: defaults, and the cooldown gate only observes

    def get(self, key: str) -> Any:
        return self.values.get(key)

    @property
    def sysfs_root(self) -> str:
        return str(self.values.get("sysfs_root") or "/sys").rstrip("/") or "/"


def device_dir() -> Path:
    return Path(os.environ.get("FARMBENCH_DEVICE_DIR", "device_configs"))


def load_device_file(path: str | Path) -> DeviceConfig:
    doc = TomlDocument.load(path)
    keys = {key: value for key, value in doc.data.items() if key not in TELEMETRY_TABLES}
    reject_unknown_keys(doc, (), doc.data, [*(f.name for f in DEVICE_FIELDS), *TELEMETRY_TABLES])
    values = validate_table(doc, (), keys, DEVICE_FIELDS)
    if not _SYSFS_ROOT.fullmatch(str(values["sysfs_root"])):
        raise doc.error(f"{values['sysfs_root']!r} must be an absolute path of letters, digits and _./+:-",
                        ("sysfs_root",), hint='e.g. sysfs_root = "/sys" (the default)')
    power = _power_table(doc) if "power" in doc.data else None
    thermal = load_thermal_table(doc, ("thermal",), doc.data["thermal"]) if "thermal" in doc.data else None
    kind = values["kind"]
    if kind == "adb" and bool(values.get("host")) == bool(values.get("serial")):
        raise ConfigError("an adb device needs either host (ADB over TCP) or serial (USB)", path=str(doc.path),
                          line=doc.line_of(("kind",)), key="host",
                          hint='add host = "192.168.1.20" (and port, default 5555), or serial = "R58M..."')
    if kind == "ssh" and not values.get("host"):
        raise ConfigError("an ssh device needs a host", path=str(doc.path), line=doc.line_of(("kind",)), key="host",
                          hint='add host = "board.local" (or a Host alias from ~/.ssh/config)')
    for key in ("key_file", "known_hosts", "ssh_config", "benchmark_model", "onnxruntime_perf_test"):
        if values.get(key) is not None:
            values[key] = str(values[key])
    name = str(values.get("name") or doc.path.stem)
    return DeviceConfig(name=name, kind=str(kind), source=str(doc.path), values=values, power=power, thermal=thermal)


def default_calibration_path(device_file: str | Path) -> Path:
    """Where ``farmbench calibrate-power`` keeps a device's battery calibration unless ``[power] calibration`` says
    otherwise: ``<name>.power.toml`` next to the device file."""
    device_file = Path(device_file)
    return device_file.with_name(f"{device_file.stem}.power.toml")


def _power_table(doc: TomlDocument) -> PowerConfig:
    table = doc.data["power"]
    if isinstance(table, dict) and table.get("source") == "android-battery" and "calibration" not in table:
        table = {**table, "calibration": str(default_calibration_path(doc.path).resolve())}
    return load_power_table(doc, ("power",), table)


_SSH_URL = re.compile(r"^ssh://")


def parse_device_url(url: str) -> DeviceConfig:
    """``ssh://[user@]host[:port]`` -> an ad-hoc SSH device (keys, agent, ssh_config and known_hosts as usual)."""
    parts = urlsplit(url)
    if parts.scheme != "ssh" or not parts.hostname:
        raise UsageError(f"cannot read device URL {url!r}", hint="write ssh://[user@]host[:port]")
    try:
        port = parts.port
    except ValueError:
        raise UsageError(f"bad port in device URL {url!r}") from None
    values = _defaults()
    values.update({"kind": "ssh", "host": parts.hostname, "port": port, "user": parts.username})
    return DeviceConfig(name=url.removeprefix("ssh://"), kind="ssh", source=url, values=values)


def parse_adb_url(url: str) -> DeviceConfig:
    """``adb://host[:port]`` or ``adb-usb://SERIAL`` -> an ad-hoc phone (no benchmark_model binary: probe only,
    unless FARMBENCH_BENCHMARK_MODEL names one)."""
    parts = urlsplit(url)
    values = _defaults()
    values["kind"] = "adb"
    if parts.scheme == "adb":
        if not parts.hostname:
            raise UsageError(f"cannot read device URL {url!r}", hint="write adb://HOST[:PORT]")
        values.update({"host": parts.hostname, "port": parts.port or 5555})
    else:
        if not parts.netloc:
            raise UsageError(f"cannot read device URL {url!r}", hint="write adb-usb://SERIAL")
        values["serial"] = parts.netloc
    if os.environ.get("FARMBENCH_BENCHMARK_MODEL"):
        values["benchmark_model"] = os.environ["FARMBENCH_BENCHMARK_MODEL"]
    return DeviceConfig(name=url.split("://", 1)[1], kind="adb", source=url, values=values)


def _defaults() -> dict[str, Any]:
    doc = TomlDocument.from_string("kind = 'local'\n", "<built-in>")
    return validate_table(doc, (), {"kind": "local"}, DEVICE_FIELDS)


def local_device() -> DeviceConfig:
    return DeviceConfig(name="local", kind="local", source="built-in", values=_defaults())


def resolve_device(ref: str, directory: Path | None = None) -> DeviceConfig:
    """A device reference (see the module doc) -> its configuration."""
    directory = directory or device_dir()
    if _SSH_URL.match(ref):
        return parse_device_url(ref)
    if ref.startswith(("adb://", "adb-usb://")):
        return parse_adb_url(ref)
    if ref.endswith(".toml") or "/" in ref:
        return load_device_file(ref)
    candidate = directory / f"{ref}.toml"
    if candidate.is_file():
        return load_device_file(candidate)
    if ref == "local":
        return local_device()
    known = sorted(p.stem for p in directory.glob("*.toml")) if directory.is_dir() else []
    raise UsageError(
        f"no device named {ref!r} (looked for {candidate})",
        hint=("devices there: " + ", ".join(known)) if known else
        "write a device file (see device_configs/*.toml) or use local / ssh://user@host",
    )


def configured_devices(directory: Path | None = None) -> list[DeviceConfig]:
    """``local`` plus every device file in the device directory (a broken file is an error naming it)."""
    directory = directory or device_dir()
    devices = {"local": local_device()}
    if directory.is_dir():
        for path in sorted(directory.glob("*.toml")):
            device = load_device_file(path)
            devices[device.name] = device
    return list(devices.values())
