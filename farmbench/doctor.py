"""``farmbench doctor``: is this machine ready to build and benchmark, and if not, what to do about it.

Each check is a plain function returning :class:`Check` (``ok``, ``warn`` or ``fail``, what was found, and a
one-line fix); :func:`run_checks` runs them all. Nothing here changes the machine: the fixes are printed, not applied.

Runtimes and converters are imported in child processes, with a timeout: importing TensorFlow takes ~10 s here and
a runtime built against another numpy can crash the interpreter that imports it (tflite-runtime 2.14 under
numpy 2). ``quick=True`` skips the imports and reads versions from the installed packages' metadata only.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import metadata
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from farmbench import __version__
from farmbench.transports.keyfiles import chmod_fix, loose_mode

STATUSES = ("ok", "warn", "fail")

CACHE_MIN_FREE_GIB = 5.0
"""Below this much free space where the artifact cache lives, warn (a default sweep with its trained weights and
exported SavedModels takes a few GB while building)."""
DB_MIN_FREE_GIB = 1.0
"""Below this much free space where the results database lives, warn."""
FAIL_FREE_GIB = 0.2
"""Below this, a build or a run will fail: fail."""
IMPORT_TIMEOUT_S = 120.0
ADB_VERSION_TIMEOUT_S = 10.0
ADB_SERVER_PORT = 5037

# Importing one module in a child and reporting on one JSON line (the parent reads the last line).
_IMPORT_PROBE = """\
import importlib, json, sys
out = {}
for name in sys.argv[1:]:
    try:
        module = importlib.import_module(name)
        out[name] = {"ok": True, "version": str(getattr(module, "__version__", "") or "")}
    except BaseException as exc:
        out[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
print(json.dumps(out))
"""


@dataclass(frozen=True)
class Check:
    """One finding: ``name`` of the check, ``status`` ok/warn/fail, ``detail`` what was found, ``fix`` what to do
    (one line; empty when nothing is to be done)."""

    name: str
    status: str
    detail: str
    fix: str = ""

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, not {self.status!r}")

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "status": self.status, "detail": self.detail, "fix": self.fix}


@dataclass(frozen=True)
class _Module:
    """A Python module farmbench uses: ``label`` for the report, the ``module`` to import, the distributions that
    provide it (the first installed one gives the version), whether farmbench needs it, and how to get it."""

    label: str
    module: str
    distributions: tuple[str, ...]
    required: bool
    install: str


RUNTIMES: tuple[_Module, ...] = (
    _Module("runtime litert", "ai_edge_litert.interpreter", ("ai-edge-litert",), True,
            "pip install ai-edge-litert (runs TFLite files on this machine)"),
    _Module("runtime tflite_runtime", "tflite_runtime.interpreter", ("tflite-runtime",), False,
            "optional: LiteRT covers TFLite here; boards may use it"),
    _Module("runtime onnxruntime", "onnxruntime", ("onnxruntime", "onnxruntime-gpu"), True,
            "pip install onnxruntime (runs ONNX files on this machine)"),
)
CONVERTERS: tuple[_Module, ...] = (
    _Module("converter tensorflow", "tensorflow", ("tensorflow-cpu", "tensorflow"), True,
            "pip install -e . (farmbench pins tensorflow-cpu)"),
    _Module("converter keras", "keras", ("keras",), True, "pip install -e ."),
    _Module("converter tf2onnx", "tf2onnx", ("tf2onnx",), True, "pip install -e ."),
    _Module("converter onnx", "onnx", ("onnx",), True, "pip install -e ."),
    _Module("converter onnxconverter-common", "onnxconverter_common", ("onnxconverter-common",), True,
            "pip install -e ."),
)


def run_checks(*, cache_dir: Path | None = None, db_path: Path | None = None, device_dir: Path | None = None,
               home: Path | None = None, quick: bool = False,
               import_timeout_s: float = IMPORT_TIMEOUT_S) -> list[Check]:
    """Every check, in a stable order. Paths default to what the other commands use (``FARMBENCH_CACHE_DIR``,
    ``FARMBENCH_DB``, ``FARMBENCH_DEVICE_DIR``, ``$HOME``)."""
    from farmbench.devices.config import device_dir as default_device_dir
    from farmbench.results.store import default_db_path
    from farmbench.variants.cache import default_cache_dir

    home = home or Path.home()
    cache_dir = cache_dir or default_cache_dir()
    db_path = db_path or default_db_path()
    device_dir = device_dir or default_device_dir()
    # The slow part (importing TensorFlow in a child) runs while the quick checks do.
    imports: dict[str, Any] = {}
    importer = threading.Thread(target=lambda: imports.update(
        import_modules(RUNTIMES + CONVERTERS, timeout_s=import_timeout_s)), daemon=True)
    if not quick:
        importer.start()
    devices, device_checks = check_device_files(device_dir)
    kinds = {str(device.get("kind")) for device in devices}
    quick_checks = [
        *check_adb_key(home / ".android" / "adbkey"),
        *check_ssh(home / ".ssh", ssh_devices="ssh" in kinds),
        check_adb_client(usb_devices=any(device.get("serial") for device in devices)),
        check_disk("disk (cache)", cache_dir, CACHE_MIN_FREE_GIB),
        check_disk("disk (results)", db_path.parent, DB_MIN_FREE_GIB),
        check_results_db(db_path),
        *device_checks,
    ]
    if not quick:
        importer.join()
    checks = [
        check_python(), check_farmbench(),
        *(check_module(module, None if quick else imports.get(module.module)) for module in RUNTIMES + CONVERTERS),
        *quick_checks,
    ]
    # A device file's key_file is often ~/.ssh/id_*: say what to fix once.
    fixes_seen: set[str] = set()
    unique = []
    for check in checks:
        if check.status != "ok" and check.fix.startswith("run: chmod"):
            if check.fix in fixes_seen:
                continue
            fixes_seen.add(check.fix)
        unique.append(check)
    return unique


# --- Python, farmbench, runtimes, converters ------------------------------------------------------------------


def check_python() -> Check:
    version = platform.python_version()
    where = f"{version} at {sys.executable}"
    if sys.version_info[:2] != (3, 11):
        return Check("python", "fail", f"{where}; farmbench needs Python 3.11 (its pinned converters are built "
                     "for it)", "create the venv with python3.11: python3.11 -m venv .venv && .venv/bin/pip install "
                     "-e .")
    return Check("python", "ok", where)


def check_farmbench() -> Check:
    location = Path(__file__).resolve().parent
    try:
        installed = metadata.version("farmbench")
    except metadata.PackageNotFoundError:
        return Check("farmbench", "warn", f"{__version__} from {location}, not installed as a package",
                     "pip install -e . (gives the `farmbench` command and records the dependency pins)")
    if installed != __version__:
        return Check("farmbench", "warn", f"{__version__} from {location}, but the installed package says "
                     f"{installed}", "pip install -e . again")
    return Check("farmbench", "ok", f"{__version__} from {location}")


def import_modules(modules: Sequence[_Module], *, timeout_s: float) -> dict[str, Any]:
    """Import each runtime in its own child (one crashing must not hide the others) and the converters together in
    one (tf2onnx imports TensorFlow anyway), in parallel. module name -> {"ok", "version" | "error"}."""
    present = [m for m in modules if _spec_exists(m.module)]
    converters = [m.module for m in present if m in CONVERTERS]
    groups = [[m.module] for m in present if m not in CONVERTERS] + ([converters] if converters else [])
    results: dict[str, Any] = {}
    lock = threading.Lock()

    def work(names: list[str]) -> None:
        found = _import_in_child(names, timeout_s)
        with lock:
            results.update(found)

    threads = [threading.Thread(target=work, args=(names,), daemon=True) for names in groups]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def _import_in_child(names: list[str], timeout_s: float) -> dict[str, Any]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    what = ", ".join(names)
    try:
        done = subprocess.run([sys.executable, "-c", _IMPORT_PROBE, *names], capture_output=True, text=True,
                              timeout=timeout_s, env=env, check=False)
    except subprocess.TimeoutExpired:
        return {name: {"ok": False, "error": f"importing {what} took longer than {timeout_s:g} s"} for name in names}
    lines = done.stdout.strip().splitlines()
    try:
        found: dict[str, Any] = json.loads(lines[-1]) if lines else {}
    except ValueError:
        found = {}
    if done.returncode != 0 or set(found) != set(names):
        tail = (done.stderr.strip().splitlines() or [""])[-1][:200]
        cause = f"killed by signal {-done.returncode}" if done.returncode < 0 else f"exit {done.returncode}"
        return {name: found.get(name) or {"ok": False, "error": f"importing {what} crashed ({cause}) {tail}".strip()}
                for name in names}
    return found


def _spec_exists(module: str) -> bool:
    try:
        return find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package that is missing or broken
        return False


def _installed_version(distributions: Iterable[str]) -> tuple[str, str] | None:
    for name in distributions:
        try:
            return name, metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def _pin_problem(distribution: str, version: str) -> str | None:
    """What is wrong with ``version`` against farmbench's own requirement on ``distribution``, if anything."""
    try:
        from packaging.requirements import Requirement
        from packaging.version import InvalidVersion, Version
    except ImportError:  # packaging is everywhere pip is, but farmbench does not need it for anything else
        return None
    try:
        requirements = metadata.requires("farmbench") or []
    except metadata.PackageNotFoundError:
        return None
    for line in requirements:
        requirement = Requirement(line)
        if requirement.marker is not None or requirement.name.lower() != distribution.lower():
            continue
        try:
            if not requirement.specifier.contains(Version(version), prereleases=True):
                return f"farmbench requires {requirement}"
        except InvalidVersion:
            return None
    return None


def check_module(module: _Module, imported: dict[str, Any] | None) -> Check:
    """``imported`` is the child's report for the module (None: not imported, metadata only)."""
    installed = _installed_version(module.distributions)
    version = installed[1] if installed else None
    if installed is None and not _spec_exists(module.module):
        if module.required:
            return Check(module.label, "fail", f"{module.module} is not installed", module.install)
        return Check(module.label, "ok", f"not installed ({module.install})")
    if imported is not None and not imported.get("ok"):
        return Check(module.label, "fail", f"{module.module} {version or ''} does not import: {imported.get('error')}",
                     "reinstall it: pip install --force-reinstall " + (installed[0] if installed else module.module))
    version = version or (imported or {}).get("version") or "unknown version"
    detail = f"{version}" + ("" if imported is not None else " (not imported: --quick)")
    problem = _pin_problem(installed[0], version) if installed else None
    if problem:
        return Check(module.label, "warn", f"{version}, but {problem}",
                     "pip install -e . (other versions change the models' bytes and so the cache keys)")
    return Check(module.label, "ok", detail)


# --- keys -----------------------------------------------------------------------------------------------------


def check_adb_key(path: Path) -> list[Check]:
    """The key farmbench signs ADB connections with (``~/.android/adbkey``, the one adb uses): private part only
    readable by you, and a ``.pub`` beside it that belongs to it (adb-shell sends that file as the public key)."""
    public = Path(f"{path}.pub")
    if not path.exists():
        return [Check("adb key", "ok", f"no {path} yet: farmbench creates it on first use of a phone, which then "
                                       "asks once to allow it")]
    checks: list[Check] = []
    mode = loose_mode(path)
    if mode is not None:
        checks.append(Check("adb key", "warn", f"{path} is accessible by other users (mode {mode:03o})",
                            f"run: {chmod_fix(path)}"))
    if not public.exists():
        checks.append(Check("adb key", "warn", f"{public} is missing (farmbench writes it on its next connection)",
                            f"run: adb pubkey {path} > {public}"))
        return checks
    expected = _adb_public_key(path)
    if expected is None:
        checks.append(Check("adb key", "fail", f"{path} is not a readable RSA private key",
                            f"move it away (mv {path} {path}.broken); a new one is created on next use"))
    elif public.read_text(errors="replace").split()[:1] != expected.split()[:1]:
        checks.append(Check("adb key", "fail", f"{public} does not belong to {path}: phones that allowed it will "
                                               "refuse farmbench's signatures",
                            f"run: adb pubkey {path} > {public} (then allow the key on each phone again)"))
    if not checks:
        checks.append(Check("adb key", "ok", f"{path} (mode 600) and its .pub match"))
    return checks


def _adb_public_key(path: Path) -> str | None:
    """The ADB public key line for the private key at ``path`` (as adb-shell computes it), or None."""
    try:
        from adb_shell.auth.keygen import write_public_keyfile

        with tempfile.TemporaryDirectory() as scratch:
            out = Path(scratch) / "adbkey.pub"
            write_public_keyfile(str(path), str(out))
            return out.read_text()
    except Exception:  # noqa: BLE001 - any parse failure means "not a usable key"
        return None


def _private_keys(ssh_dir: Path) -> list[Path]:
    """Files in ``ssh_dir`` that hold a private key (PEM or OpenSSH format), whatever their name."""
    found = []
    for path in sorted(p for p in ssh_dir.iterdir() if p.is_file() and not p.name.endswith(".pub")):
        try:
            with path.open("rb") as handle:
                head = handle.read(64)
        except OSError:
            continue
        if re.match(rb"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----", head):
            found.append(path)
    return found


def check_ssh(ssh_dir: Path, *, ssh_devices: bool) -> list[Check]:
    """Private keys in ``~/.ssh`` (permissions), the directory itself, ssh-agent, and known_hosts."""
    checks: list[Check] = []
    keys = _private_keys(ssh_dir) if ssh_dir.is_dir() else []
    if ssh_dir.is_dir():
        dir_mode = ssh_dir.stat().st_mode & 0o777
        if dir_mode & 0o022:
            checks.append(Check("ssh dir", "warn", f"{ssh_dir} is writable by other users (mode {dir_mode:03o}); "
                                                   "OpenSSH refuses keys and config there", f"run: chmod 700 {ssh_dir}"))
    loose = [(key, loose_mode(key)) for key in keys]
    for key, key_mode in loose:
        if key_mode is not None:
            checks.append(Check("ssh key", "warn", f"{key} is accessible by other users (mode {key_mode:03o}); "
                                                   "OpenSSH refuses it", f"run: {chmod_fix(key)}"))
    if keys and all(key_mode is None for _key, key_mode in loose):
        checks.append(Check("ssh keys", "ok", ", ".join(key.name for key in keys) + f" in {ssh_dir}, readable only "
                                                                                   "by you"))
    agent, identities = check_ssh_agent(has_keys=bool(keys), needed=ssh_devices)
    checks.append(agent)
    if not keys and not identities:
        checks.append(Check("ssh keys", "warn" if ssh_devices else "ok",
                            f"no private key in {ssh_dir} and none in an agent"
                            + ("" if ssh_devices else " (needed once you add SSH boards)"),
                            "run: ssh-keygen -t ed25519, then ssh-copy-id user@board" if ssh_devices else ""))
    known_hosts = ssh_dir / "known_hosts"
    if known_hosts.is_file():
        entries = [line for line in known_hosts.read_text(errors="replace").splitlines()
                   if line.strip() and not line.startswith("#")]
        checks.append(Check("known_hosts", "ok", f"{known_hosts}: {len(entries)} entries"))
    elif ssh_devices:
        checks.append(Check("known_hosts", "warn", f"no {known_hosts}: every SSH board's host key is unknown, and "
                                                   "farmbench refuses unknown keys",
                            "connect to each board once with ssh, or set accept_new_host_key = true in its device "
                            "file (or pass --accept-new-host-key once)"))
    else:
        checks.append(Check("known_hosts", "ok", f"no {known_hosts} (needed once you add SSH boards)"))
    return checks


def check_ssh_agent(*, has_keys: bool, needed: bool = True) -> tuple[Check, int]:
    """Whether ssh-agent answers at ``SSH_AUTH_SOCK``, and how many identities it holds (0 when none answers).
    ``has_keys``: key files in ~/.ssh make an agent optional; ``needed``: there are SSH boards to log in to."""
    socket_path = os.environ.get("SSH_AUTH_SOCK")
    start = "run: eval $(ssh-agent) && ssh-add"
    quiet = has_keys or not needed  # nothing is missing for lack of an agent
    if not socket_path:
        if quiet:
            return Check("ssh-agent", "ok", "not running (SSH_AUTH_SOCK unset)"
                         + ("; key files are used directly" if has_keys else "")), 0
        return Check("ssh-agent", "warn", "not running (SSH_AUTH_SOCK unset)", start), 0
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(2.0)
            probe.connect(socket_path)
    except OSError as err:
        return Check("ssh-agent", "warn", f"SSH_AUTH_SOCK={socket_path} but no agent answers "
                                          f"({err.strerror or err})", start), 0
    import paramiko

    agent = paramiko.Agent()
    try:
        count = len(agent.get_keys())
    finally:
        agent.close()
    if count == 0:
        return Check("ssh-agent", "ok" if quiet else "warn", f"running at {socket_path}, no identities",
                     "" if quiet else "run: ssh-add (or ssh-add ~/.ssh/KEY)"), 0
    return Check("ssh-agent", "ok", f"running at {socket_path}, {count} identit{'y' if count == 1 else 'ies'}"), count


# --- tools, disk, results, device files --------------------------------------------------------------------------


def check_adb_client(*, usb_devices: bool) -> Check:
    """Debian's ``adb`` (optional: farmbench speaks ADB itself), and whether an adb server holds USB phones."""
    adb = shutil.which("adb")
    server = _listening("127.0.0.1", ADB_SERVER_PORT)
    if adb is None:
        return Check("adb client", "ok", "not installed (optional: farmbench speaks ADB itself; apt-get install adb "
                                         "gives `adb devices` for troubleshooting)")
    try:
        done = subprocess.run([adb, "version"], capture_output=True, text=True, timeout=ADB_VERSION_TIMEOUT_S,
                              check=False)
        version = (done.stdout.splitlines() or ["unknown version"])[0].strip()
    except (OSError, subprocess.TimeoutExpired) as err:
        return Check("adb client", "warn", f"{adb} does not run: {err}", "reinstall it: apt-get install --reinstall adb")
    if server and usb_devices:
        return Check("adb client", "warn", f"{version} at {adb}; an adb server is running (port {ADB_SERVER_PORT}) "
                                           "and claims USB phones", "run: adb kill-server (before using USB phones)")
    return Check("adb client", "ok", f"{version} at {adb}" + ("; adb server running" if server else ""))


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def check_disk(name: str, directory: Path, min_free_gib: float) -> Check:
    """Free space where ``directory`` is (or would be created: its nearest existing parent)."""
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        free_gib = shutil.disk_usage(existing).free / 2**30
    except OSError as err:
        return Check(name, "fail", f"cannot read free space at {existing}: {err.strerror or err}",
                     f"check that {existing} is mounted and readable")
    detail = f"{free_gib:.1f} GiB free at {directory}"
    if free_gib < FAIL_FREE_GIB:
        return Check(name, "fail", detail + " (builds and runs will fail)",
                     f"free space there, or point it elsewhere ({_relocate_hint(name)})")
    if free_gib < min_free_gib:
        return Check(name, "warn", detail + f" (under {min_free_gib:g} GiB)",
                     f"free space there, or point it elsewhere ({_relocate_hint(name)})")
    return Check(name, "ok", detail)


def _relocate_hint(name: str) -> str:
    return "FARMBENCH_CACHE_DIR / --cache-dir; `farmbench cache prune`" if "cache" in name else "FARMBENCH_DB / --db"


def check_results_db(path: Path) -> Check:
    """The results database's schema version, read without changing the file (no migration)."""
    from farmbench.results.schema import SCHEMA_VERSION

    if not path.exists():
        return Check("results db", "ok", f"no database at {path} yet (the first run creates it)")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
        try:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            conn.close()
    except sqlite3.Error as err:
        return Check("results db", "fail", f"{path} cannot be read as a database: {err}",
                     "point --db / FARMBENCH_DB at another file, or move this one away")
    if version > SCHEMA_VERSION:
        return Check("results db", "fail", f"{path} has schema version {version}, newer than this farmbench "
                                           f"understands ({SCHEMA_VERSION})", "upgrade farmbench: pip install -e . "
                                                                              "from a newer checkout")
    if version == 0 or "runs" not in tables:
        return Check("results db", "fail", f"{path} is not a farmbench results database (schema version {version})",
                     "point --db / FARMBENCH_DB at another file, or move this one away")
    if version < SCHEMA_VERSION:
        return Check("results db", "warn", f"{path}: schema version {version}, this farmbench writes "
                                           f"{SCHEMA_VERSION}; the next run migrates it in place",
                     f"back it up first: cp {path} {path}.v{version}")
    return Check("results db", "ok", f"{path}: schema version {version}")


def check_device_files(directory: Path) -> tuple[list[Any], list[Check]]:
    """Load every device file (errors name file:line: key) and check the key files they name."""
    from farmbench.devices.config import load_device_file
    from farmbench.errors import FarmbenchError

    if not directory.is_dir():
        return [], [Check("device files", "ok", f"no device directory at {directory} (only `local`; set "
                                                 "FARMBENCH_DEVICE_DIR or create device_configs/)")]
    devices, checks = [], []
    files = sorted(directory.glob("*.toml"))
    for path in files:
        try:
            device = load_device_file(path)
        except FarmbenchError as err:
            checks.append(Check("device file", "fail", err.message, err.hint or f"fix {path}"))
            continue
        devices.append(device)
        checks.extend(_device_key_checks(device))
    good = len(devices)
    if good == len(files):
        checks.insert(0, Check("device files", "ok", f"{good} in {directory}: "
                               + (", ".join(device.name for device in devices) or "none")))
    return devices, checks


def _device_key_checks(device: Any) -> list[Check]:
    key = device.get("key_file")
    if not key or device.kind not in ("ssh", "adb"):
        return []
    path = Path(str(key)).expanduser()
    label = f"device {device.name}"
    if not path.is_file():
        if device.kind == "adb":
            return []  # created on first use, like ~/.android/adbkey
        return [Check(label, "fail", f"key_file {path} does not exist ({device.source})",
                      "fix the path, or remove key_file to use ssh-agent and ~/.ssh keys")]
    mode = loose_mode(path)
    if mode is not None:
        return [Check(label, "warn", f"key_file {path} is accessible by other users (mode {mode:03o})",
                      f"run: {chmod_fix(path)}")]
    return []


def summary(checks: Sequence[Check]) -> tuple[int, int]:
    """(warnings, failures)."""
    return sum(c.status == "warn" for c in checks), sum(c.status == "fail" for c in checks)

