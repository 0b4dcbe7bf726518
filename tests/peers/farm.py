"""A simulated device farm on loopback: SSH board entries on one real sshd, and ADB device emulators on ports of their
own, each with a device file. Used by the scale test (tests/test_farm_scale.py) and benchmarks/farm_scale.py.

Every board entry is the same machine, so each gets an ``identity`` in its device file (as cloned SD-card images
need on a real farm), a private cache directory on the "board", and its own name. Every phone has its own serial
and model name (``ro.serialno``, ``ro.product.model``), which each measurement's context carries: a record can be
traced to the emulator that produced it.
"""

from __future__ import annotations

import contextlib
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from farmbench.transports.adb import load_or_create_key
from tests.peers.adb_emulator import AdbEmulator, install_benchmark_model
from tests.peers.sshd import LEAN_SHELL_CONFIG, SshdPeer, running_sshd


@dataclass(frozen=True)
class FarmDevice:
    name: str
    kind: str  # "ssh" or "adb"
    path: Path  # its device file
    identity: str  # what the results store must record for it
    model: str | None = None  # phones: ro.product.model, carried by every measurement's context


@dataclass
class Farm:
    devices: list[FarmDevice]
    sshd: SshdPeer
    emulators: list[AdbEmulator]

    def device_args(self) -> list[str]:
        return [arg for device in self.devices for arg in ("--device", str(device.path))]


@contextlib.contextmanager
def simulated_farm(directory: Path, *, boards: int, phones: int, sshd: SshdPeer | None = None,
                   lean_shell: bool = False) -> Iterator[Farm]:
    """Start ``phones`` emulators (and an sshd unless one is given; ``lean_shell``: one whose commands skip the login
    user's ~/.bashrc, see ``LEAN_SHELL_CONFIG``), write the device files under ``directory``, and stop everything on
    exit."""
    directory.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        if sshd is None:
            sshd_dir = directory / "sshd"
            sshd_dir.mkdir(exist_ok=True)
            sshd = stack.enter_context(running_sshd(sshd_dir, extra_config=LEAN_SHELL_CONFIG if lean_shell else ""))
        known_hosts = sshd.write_known_hosts(directory / "known_hosts")
        ssh_config = directory / "ssh_config"
        ssh_config.write_text("")
        binary = install_benchmark_model(directory / "tools" / "benchmark_model")
        # One ADB key for every phone, made now: sixteen device threads must not race to create it.
        load_or_create_key(directory / "adbkey")
        devices: list[FarmDevice] = []
        for number in range(boards):
            name = f"board-{number:02d}"
            path = directory / f"{name}.toml"
            path.write_text(textwrap.dedent(f"""\
                kind = "ssh"
                name = "{name}"
                identity = "{name}"
                host = "{sshd.host}"
                port = {sshd.port}
                user = "{sshd.user}"
                key_file = "{sshd.client_key}"
                known_hosts = "{known_hosts}"
                ssh_config = "{ssh_config}"
                connect_timeout_s = 20
                python = "{sys.executable}"
                cache_dir = "{directory / 'board-caches' / name}"
                """))
            devices.append(FarmDevice(name, "ssh", path, f"ssh:configured:{name}"))
        emulators = []
        for number in range(phones):
            name = f"phone-{number:02d}"
            serial, model = f"FARM{number:04d}", f"Farm Phone {number:02d}"
            emulator = AdbEmulator(directory / f"{name}-sandbox", auth="accept-new",
                                   props={"ro.serialno": serial, "ro.product.model": model})
            stack.enter_context(emulator)
            emulators.append(emulator)
            path = directory / f"{name}.toml"
            path.write_text(textwrap.dedent(f"""\
                kind = "adb"
                name = "{name}"
                host = "127.0.0.1"
                port = {emulator.port}
                key_file = "{directory / 'adbkey'}"
                connect_timeout_s = 20
                auth_timeout_s = 20
                benchmark_model = "{binary}"
                """))
            devices.append(FarmDevice(name, "adb", path, f"adb:{serial}:{model}", model))
        yield Farm(devices, sshd, emulators)


__all__ = ["Farm", "FarmDevice", "simulated_farm"]
