"""Private key files (SSH identities, the ADB key): the permission rule OpenSSH applies, as a warning.

OpenSSH refuses a private key that group or others may access (``mode & 0o077``); paramiko and adb-shell use such a
key silently, and anyone who can read it can log in to every board, or drive every phone, that trusts it. farmbench
keeps using the key (refusing would break setups that work with other tools) but says so once per file per process,
through the ``logging`` warning path the transports already use (printed on stderr by the CLI), with the fix.
``farmbench doctor`` reports the same rule as a check.
"""

from __future__ import annotations

import logging
import stat
import threading
from pathlib import Path

_log = logging.getLogger(__name__)

_warned: set[Path] = set()
_warned_lock = threading.Lock()  # devices connect from parallel threads


def loose_mode(path: Path) -> int | None:
    """The permission bits of ``path`` when group or others may access it (what OpenSSH refuses), else None.
    None as well when the file cannot be stat'ed: the caller reports a missing key its own way."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return None
    return stat.S_IMODE(mode) if mode & (stat.S_IRWXG | stat.S_IRWXO) else None


def chmod_fix(path: Path) -> str:
    return f"chmod 600 {path}"


def warn_if_loose(path: Path, what: str) -> bool:
    """Warn (once per file per process) when the private key ``path`` is accessible by other users. ``what`` names
    the key in the message ("SSH private key", "ADB private key"). Returns whether the key is loose."""
    mode = loose_mode(path)
    if mode is None:
        return False
    key = path.expanduser().absolute()
    with _warned_lock:
        first = key not in _warned
        _warned.add(key)
    if first:
        _log.warning("warning: %s %s is accessible by other users (mode %03o); OpenSSH would refuse it, and anyone "
                     "who can read it can use what trusts it. Run: %s", what, path, mode, chmod_fix(path))
    return True
