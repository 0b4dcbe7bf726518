"""Device files (``device_configs/*.toml``) and ad-hoc device URLs.

A device is named on the command line or in a sweep's ``[run] devices`` as one of:

* ``local`` -- this machine (a built-in device; a ``local.toml`` in the device directory overrides it)
* ``ssh://[user@]host[:port]`` -- a Linux board over SSH, with keys, agent, ``~/.ssh/config`` and known_hosts
* a name -- ``<device dir>/<name>.toml``, the device dir being ``$FARMBENCH_DEVICE_DIR`` or ``./device_configs``
* a path to a ``.toml`` file

Every key is described in ``DEVICE_FIELDS``; unknown keys, wrong types and missing fields are errors that name
file, line and key (exit 2), like sweep files.
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

KINDS = ("local", "ssh", "adb")

DEVICE_FIELDS: tuple[Field, ...] = (
    Field("name", "str", doc="device name in results and reports (default: the file name)"),
    Field("kind", "str", required=True, choices=KINDS, doc="local (this machine), ssh (Linux board), adb"),
    Field("description", "str", default="", doc="free text shown by `farmbench devices`"),
    # SSH boards
    Field("host", "str", doc="ssh: host name, address, or a Host alias from ~/.ssh/config"),
    Field("port", "int", min_value=1, doc="ssh: port (default: from ~/.ssh/config, else 22)"),
    Field("user", "str", doc="ssh: user (default: from ~/.ssh/config, else your user name)"),
    Field("key_file", "path", doc="ssh: private key file (default: ssh-agent, then ~/.ssh/id_*)"),
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
)


@dataclass(frozen=True)
class DeviceConfig:
    name: str
    kind: str
    source: str  # the file, "built-in" or the URL it came from
    values: dict[str, Any] = field(default_factory=dict)

    def get(self, key: str) -> Any:
        return self.values.get(key)


def device_dir() -> Path:
    return Path(os.environ.get("FARMBENCH_DEVICE_DIR", "device_configs"))


def load_device_file(path: str | Path) -> DeviceConfig:
    doc = TomlDocument.load(path)
    reject_unknown_keys(doc, (), doc.data, [f.name for f in DEVICE_FIELDS])
    values = validate_table(doc, (), doc.data, DEVICE_FIELDS)
    kind = values["kind"]
    if kind == "ssh" and not values.get("host"):
        raise ConfigError("an ssh device needs a host", path=str(doc.path), line=doc.line_of(("kind",)), key="host",
                          hint='add host = "board.local" (or a Host alias from ~/.ssh/config)')
    for key in ("key_file", "known_hosts", "ssh_config"):
        if values.get(key) is not None:
            values[key] = str(values[key])
    name = str(values.get("name") or doc.path.stem)
    return DeviceConfig(name=name, kind=str(kind), source=str(doc.path), values=values)


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
        raise UsageError(f"{ref}: Android devices are not supported yet", hint="use local or ssh:// devices")
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
