"""The device-side sampler: one POSIX ``sh`` script for every transport, and the parser for what it prints.

The same text runs on this machine, on Linux boards over SSH (dash, bash, busybox ash) and on Android phones over
ADB (mksh, the shell of ``/system/bin/sh``; ``sleep`` there is toybox's). It needs nothing but the shell's builtins,
``/proc/uptime`` and a ``sleep`` that takes fractional seconds (toybox, busybox and coreutils all do; without one the
sampler falls back to one tick per second and says so in a ``W`` line).

Composition
-----------
:func:`wrap_with_sampler` takes the benchmark's argv and returns a :class:`SampledCommand` whose ``argv`` is
``["sh", "-c", SCRIPT]``. Hand that argv to ``Transport.run``: the transport quotes it in its one place, as it does
every argv. Inside SCRIPT, every piece of data that is not farmbench's own constant text -- sysfs paths, the user's
``command``, the benchmark argv -- is embedded through :mod:`farmbench.transports.quoting` (``quote`` and ``join``),
so nothing from a config file can change the script's structure. What the script does::

    print a header; start the sampling loop in the background (one tick at once, then every 1/rate_hz s)
    sleep idle_s                                   # the idle baseline
    mark start; run the benchmark (foreground, its stdout and stderr untouched); mark end with its exit code
    stop the sampling loop (and the sleep it may be in); take one last sample; exit with the benchmark's exit code

The loop also ends by itself when the script's shell is gone (killed with SIGKILL, which no trap sees), so a
sampler never outlives its run on the device.

A tick reads each channel file with the ``read`` builtin (no process per file): a file that is missing or unreadable
gives an empty field, never an error that stops the loop. The optional ``command`` runs once per tick, in a command
substitution; its output's newlines become ``;`` so it fits on the line. Ticks follow a schedule on the device's
clock (``/proc/uptime``), so the time a tick takes does not add up into drift; a late tick is not made up for.

Output format (version 1)
-------------------------
Every sampler line starts with a per-run tag (``fbs`` + 8 hex digits) and a TAB, so sampler lines can be told from
the benchmark's own output, which shares stdout; fields are TAB-separated (values such as ``Not charging`` contain
spaces)::

    TAG  H  1  <channels>  <has command 0|1>  <period cs>  <fractional sleep 1|0>
    TAG  M  idle   <t>                                    the sampler started; the idle baseline begins
    TAG  S  <t>  <value 1> ... <value n>  [<command output>]
    TAG  M  start  <t>                                    the benchmark starts
    TAG  M  end    <t>  <exit code>                       the benchmark exited
    TAG  W  <word>                                        a warning (no-fractional-sleep)

``<t>`` is ``/proc/uptime``'s first field: seconds since boot on CLOCK_BOOTTIME (monotonic, counts suspend), with
two decimals, so timestamps have 10 ms resolution. Values are the first line of each file, stripped, raw: units and
signs are the power module's business. The last line may be cut off when the command is killed (timeout): the parser
drops a line without its newline and says so in :attr:`SamplerRun.warnings`.

Because every sampler write is one short ``echo`` (one ``write(2)`` under PIPE_BUF), it never tears, even when the
benchmark writes at the same moment; a sampler line may land in the middle of a benchmark line, and
:func:`parse_sampler_output` splices it out exactly, returning the benchmark's output as it wrote it.

Limits: the sampler costs one ``sleep`` process per tick (and one ``sh`` subshell plus the command per tick when a
command is configured), the same during the idle baseline and the run, so it cancels out of energy above idle. Rates
above 100 Hz are refused (the clock has 10 ms resolution); effective rates of a few tens of Hz are realistic on
phones. ``echo`` in dash and mksh interprets backslashes, so a command printing backslashes is recorded mangled.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from farmbench.errors import RunnerError, UsageError
from farmbench.transports.quoting import join, quote

FORMAT_VERSION = 1
MAX_RATE_HZ = 100.0
COMMAND_NEWLINE = ";"
"""What a newline in the per-tick command's output becomes on the sampler line."""

_TAG = re.compile(r"[A-Za-z0-9_]{3,32}")
_CHANNEL_NAME = re.compile(r"[A-Za-z0-9_.:@/+-]+")
# Characters a listing glob may contain: it is embedded unquoted so the shell expands it.
_GLOB = re.compile(r"/[A-Za-z0-9_./*?:\[\]+-]*")


@dataclass(frozen=True)
class Channel:
    """One file read at every tick: ``name`` is how results refer to it, ``path`` the absolute path on the device."""

    name: str
    path: str

    def __post_init__(self) -> None:
        if not _CHANNEL_NAME.fullmatch(self.name):
            raise UsageError(f"sampler channel name {self.name!r} may only contain letters, digits and _.:@/+-")
        _check_path(self.path, f"sampler channel {self.name}")


@dataclass(frozen=True)
class SamplerSpec:
    """What to sample: ``channels`` (files), at ``rate_hz`` ticks per second, plus an optional shell ``command`` run
    once per tick whose output is kept (the ``command`` power source). ``rate_hz`` is rounded to a whole number of
    10 ms periods (``period_s``)."""

    channels: tuple[Channel, ...] = ()
    rate_hz: float = 10.0
    command: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.channels, tuple):
            object.__setattr__(self, "channels", tuple(self.channels))
        if not (0 < self.rate_hz <= MAX_RATE_HZ):
            raise UsageError(f"sampler rate_hz must be > 0 and <= {MAX_RATE_HZ:g} (the device clock has 10 ms "
                             f"resolution), got {self.rate_hz}")
        names = [channel.name for channel in self.channels]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise UsageError(f"sampler channels named more than once: {', '.join(duplicates)}")
        if self.command is not None:
            if not self.command.strip():
                raise UsageError("the per-tick sampler command is empty")
            if "\0" in self.command:
                raise UsageError("the per-tick sampler command contains a NUL byte")
        if not self.channels and self.command is None:
            raise UsageError("the sampler has nothing to sample: no channels and no command")

    @property
    def period_cs(self) -> int:
        """The tick period in centiseconds (the unit of /proc/uptime), at least 1."""
        return max(1, round(100.0 / self.rate_hz))

    @property
    def period_s(self) -> float:
        return self.period_cs / 100.0

    @property
    def channel_names(self) -> tuple[str, ...]:
        return tuple(channel.name for channel in self.channels)


@dataclass(frozen=True)
class SampledCommand:
    """The benchmark wrapped in the sampler: run ``argv`` through a transport, then
    ``parse_sampler_output(completed.stdout, spec, tag)``."""

    argv: list[str]
    tag: str
    spec: SamplerSpec
    idle_s: float


@dataclass(frozen=True)
class Sample:
    """One tick: the device time and the raw value of each channel (``None``: the file was missing, unreadable or
    empty), plus the command's output when the spec has a command (``None`` when it printed nothing)."""

    t_s: float
    values: tuple[str | None, ...]
    command_output: str | None = None


@dataclass(frozen=True)
class SamplerRun:
    """A parsed sampler run. ``markers`` maps ``idle``/``start``/``end`` to device times in seconds; ``exit_code``
    is the benchmark's (None when the run was cut off before it ended); ``output`` is the benchmark's own stdout with
    the sampler lines removed."""

    channels: tuple[str, ...]
    samples: tuple[Sample, ...]
    markers: dict[str, float] = field(default_factory=dict)
    exit_code: int | None = None
    output: str = ""
    period_s: float | None = None
    warnings: tuple[str, ...] = ()

    @property
    def window(self) -> tuple[float, float] | None:
        """(start, end) of the benchmark process in device seconds, when both markers arrived."""
        if "start" in self.markers and "end" in self.markers:
            return self.markers["start"], self.markers["end"]
        return None

    @property
    def idle_window(self) -> tuple[float, float] | None:
        """(sampler start, benchmark start): the idle baseline, when both markers arrived and it is not empty."""
        if "idle" in self.markers and "start" in self.markers and self.markers["start"] > self.markers["idle"]:
            return self.markers["idle"], self.markers["start"]
        return None

    def column(self, channel: str) -> list[tuple[float, str | None]]:
        """(t_s, raw value) of every sample for one channel."""
        try:
            index = self.channels.index(channel)
        except ValueError:
            raise KeyError(f"no sampler channel {channel!r} (have: {', '.join(self.channels) or 'none'})") from None
        return [(sample.t_s, sample.values[index]) for sample in self.samples]


def new_tag() -> str:
    """A fresh per-run tag: nothing a benchmark prints will start with it by chance."""
    return "fbs" + uuid.uuid4().hex[:8]


def wrap_with_sampler(spec: SamplerSpec, benchmark_argv: Sequence[str], *, idle_s: float = 0.0,
                      tag: str | None = None, shell: Sequence[str] = ("sh",)) -> SampledCommand:
    """The benchmark argv wrapped in the sampler (see the module doc). ``shell`` is the argv prefix that runs a
    script with ``-c`` (``("busybox", "sh")`` in tests)."""
    tag = tag or new_tag()
    script = sampler_script(spec, benchmark_argv, idle_s=idle_s, tag=tag)
    return SampledCommand(argv=[*shell, "-c", script], tag=tag, spec=spec, idle_s=idle_s)


def sampler_script(spec: SamplerSpec, benchmark_argv: Sequence[str], *, idle_s: float, tag: str) -> str:
    """The POSIX sh text of the sampler around ``benchmark_argv`` (quoted with :func:`quoting.join`)."""
    if not _TAG.fullmatch(tag):
        raise UsageError(f"sampler tag must be 3-32 letters, digits or _, got {tag!r}")
    if not idle_s >= 0:
        raise UsageError(f"idle_s must be >= 0, got {idle_s}")
    try:
        benchmark = join(benchmark_argv)
    except (TypeError, ValueError) as err:
        raise UsageError(f"cannot run the benchmark under the sampler: {err}") from None
    idle_cs = round(idle_s * 100)
    reads = "".join(f"fb_v=;read -r fb_v 2>/dev/null <{quote(c.path)};fb_l=\"$fb_l\t$fb_v\"\n" for c in spec.channels)
    if spec.command is not None:
        # eval keeps the user's text from changing the script's structure; newlines become COMMAND_NEWLINE.
        reads += (f"fb_v=$(eval {quote(spec.command)} 2>/dev/null)\n"
                  f"while :;do case $fb_v in *\"$fb_N\"*)fb_v=\"${{fb_v%%\"$fb_N\"*}}{COMMAND_NEWLINE}"
                  f"${{fb_v#*\"$fb_N\"}}\";;*)break;;esac;done\n"
                  "fb_l=\"$fb_l\t$fb_v\"\n")
    idle = f"fb_ar {idle_cs};sleep $fb_a\n" if idle_cs > 0 else ""
    return (
        f"fb_T={tag};fb_P={spec.period_cs};fb_N='\n'\n"
        "fb_t(){ read -r fb_u fb_x </proc/uptime; }\n"
        # Centiseconds since the loop started (fb_b, whole seconds) from "12345.67": relative, so that mksh's 32-bit
        # arithmetic never overflows; the fraction loses one leading zero so $((..)) never reads it as octal.
        "fb_cs(){ fb_t;fb_s=${fb_u%.*};fb_f=${fb_u#*.};fb_f=${fb_f#0};fb_c=$(((fb_s-fb_b)*100+${fb_f:-0})); }\n"
        # fb_a: sleep's argument for $1 centiseconds (whole seconds, rounded up, without a fractional sleep).
        "fb_ar(){ if [ $fb_F = 1 ];then fb_r=$(($1%100));[ $fb_r -lt 10 ]&&fb_r=0$fb_r;fb_a=$(($1/100)).$fb_r\n"
        "else fb_a=$((($1+99)/100));fi; }\n"
        "fb_tick(){ fb_t;fb_l=\"$fb_T\tS\t$fb_u\"\n"
        f"{reads}"
        "echo \"$fb_l\"; }\n"
        # The loop sleeps in a child it waits for, so a TERM from the parent ends the sleep too: no process is left
        # holding stdout open after the script exits.
        # $$ is the parent shell even in the loop's subshell: if it dies without a trap (SIGKILL), the loop ends too.
        "fb_loop(){ fb_z=;trap 'kill $fb_z 2>/dev/null;exit 0' TERM;fb_t;fb_b=${fb_u%.*};fb_cs;fb_n=$fb_c\n"
        "while kill -0 $$ 2>/dev/null;do fb_tick;fb_n=$((fb_n+fb_P));fb_cs;fb_d=$((fb_n-fb_c))\n"
        "if [ $fb_d -gt 0 ];then fb_ar $fb_d;sleep $fb_a & fb_z=$!;wait $fb_z;fb_z=;else fb_n=$fb_c;fi;done; }\n"
        # Without fractional sleep, ticks can come at most once a second.
        "fb_F=1;sleep 0.01 2>/dev/null||{ fb_F=0;[ $fb_P -lt 100 ]&&fb_P=100; }\n"
        f"echo \"$fb_T\tH\t{FORMAT_VERSION}\t{len(spec.channels)}\t{int(spec.command is not None)}\t$fb_P\t$fb_F\"\n"
        "[ $fb_F = 1 ]||echo \"$fb_T\tW\tno-fractional-sleep\"\n"
        "fb_t;echo \"$fb_T\tM\tidle\t$fb_u\"\n"
        "fb_loop </dev/null & fb_p=$!\n"
        "trap 'kill $fb_p 2>/dev/null;exit 129' HUP;trap 'kill $fb_p 2>/dev/null;exit 130' INT\n"
        "trap 'kill $fb_p 2>/dev/null;exit 143' TERM\n"
        f"{idle}"
        "fb_t;echo \"$fb_T\tM\tstart\t$fb_u\"\n"
        f"{benchmark}\n"
        "fb_rc=$?;fb_t;echo \"$fb_T\tM\tend\t$fb_u\t$fb_rc\"\n"
        "kill $fb_p 2>/dev/null;wait $fb_p 2>/dev/null;fb_tick\n"
        "exit $fb_rc\n"
    )


def busy_loop_argv(duration_s: float, workers: int) -> list[str]:
    """An argv that keeps ``workers`` CPUs busy with shell loops for ``duration_s`` (calibration's load), with
    nothing but sh builtins and ``sleep``."""
    if workers < 1 or not duration_s > 0:
        raise UsageError(f"busy loop needs workers >= 1 and duration_s > 0, got {workers} and {duration_s}")
    script = ('i=0;p=;while [ $i -lt "$1" ];do (while :;do :;done) & p="$p $!";i=$((i+1));done;'
              'sleep "$2";kill $p')
    return ["sh", "-c", script, "farmbench-busy", str(workers), f"{duration_s:g}"]


def read_files_script(globs: Sequence[str]) -> str:
    """sh that prints, for every existing file matching each absolute glob, ``F<TAB>path<TAB>r<TAB>value`` (r: 1 when
    readable by us; value: the file's first line, empty when it cannot be read). One command lists thermal zones,
    hwmon chips or RAPL zones; see :func:`parse_file_listing`. Globs are farmbench's own patterns (or a test's root),
    embedded unquoted so the shell expands them: only ``A-Za-z0-9_./*?:[]+-`` are accepted."""
    lines = []
    for glob in globs:
        if not _GLOB.fullmatch(glob):
            raise UsageError(f"listing pattern {glob!r} must be an absolute path of A-Za-z0-9_./*?:[]+- characters",
                             hint="use a directory without spaces or shell characters")
        lines.append(f'for f in {glob};do [ -e "$f" ]||continue;v=;read -r v 2>/dev/null <"$f";r=1;[ -r "$f" ]||r=0;'
                     'echo "F\t$f\t$r\t$v";done')
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class ListedFile:
    path: str
    readable: bool
    value: str | None


def parse_file_listing(text: str) -> dict[str, ListedFile]:
    """The output of :func:`read_files_script`: path -> :class:`ListedFile` (value None when empty)."""
    files: dict[str, ListedFile] = {}
    for line in text.splitlines():
        parts = line.rstrip("\r").split("\t", 3)
        if len(parts) != 4 or parts[0] != "F":
            continue
        value = parts[3].strip()
        files[parts[1]] = ListedFile(parts[1], parts[2] == "1", value or None)
    return files


def parse_sampler_output(text: str, spec: SamplerSpec, tag: str) -> SamplerRun:
    """Split the sampler's lines (those starting with ``tag``) out of ``text`` and parse them.

    Tolerant of what happens on real devices: a truncated last line is dropped, ``\\r\\n`` line ends (ADB's pty) are
    accepted, a malformed line is skipped; each of these adds a warning. Raises RunnerError only when the output
    cannot belong to ``spec`` (another version, another number of channels).
    """
    records, output, warnings = _split(text, tag)
    n_channels = len(spec.channels)
    has_command = spec.command is not None
    samples: list[Sample] = []
    markers: dict[str, float] = {}
    exit_code: int | None = None
    period_s: float | None = None
    for record in records:
        fields = record.split("\t")
        kind = fields[1] if len(fields) > 1 else ""
        try:
            if kind == "S":
                samples.append(_sample(fields, n_channels, has_command))
            elif kind == "M" and len(fields) >= 4:
                markers[fields[2]] = float(fields[3])
                if fields[2] == "end" and len(fields) >= 5:
                    exit_code = int(fields[4])
            elif kind == "H" and len(fields) >= 6:
                version, channels, command = int(fields[2]), int(fields[3]), int(fields[4])
                if version != FORMAT_VERSION or channels != n_channels or command != int(has_command):
                    raise RunnerError(
                        f"sampler output is format {version} with {channels} channels and command={command}, "
                        f"expected format {FORMAT_VERSION} with {n_channels} channels and command={int(has_command)}",
                        hint="parse the output with the SamplerSpec that built the command")
                period_s = int(fields[5]) / 100.0
            elif kind == "W" and len(fields) >= 3:
                warnings.append(fields[2])
            else:
                warnings.append(f"unknown sampler line skipped: {record[:80]!r}")
        except ValueError:
            warnings.append(f"malformed sampler line skipped: {record[:80]!r}")
    return SamplerRun(channels=spec.channel_names, samples=tuple(samples), markers=markers, exit_code=exit_code,
                      output=output, period_s=period_s, warnings=tuple(warnings))


def _sample(fields: list[str], n_channels: int, has_command: bool) -> Sample:
    expected = 3 + n_channels + int(has_command)
    # The command's output is the last field and may itself contain TABs.
    if len(fields) < expected or (not has_command and len(fields) != expected):
        raise ValueError(f"expected {expected} fields, got {len(fields)}")
    values = tuple(value.strip() or None for value in fields[3:3 + n_channels])
    command_output = "\t".join(fields[3 + n_channels:]).strip() or None if has_command else None
    return Sample(t_s=float(fields[2]), values=values, command_output=command_output)


def _split(text: str, tag: str) -> tuple[list[str], str, list[str]]:
    """(sampler records without their tag prefix's newline, the rest of the text, warnings)."""
    prefix = tag + "\t"
    records: list[str] = []
    rest: list[str] = []
    warnings: list[str] = []
    position = 0
    while True:
        at = text.find(prefix, position)
        if at < 0:
            rest.append(text[position:])
            break
        rest.append(text[position:at])
        end = text.find("\n", at)
        if end < 0:
            warnings.append(f"truncated sampler line dropped: {text[at:at + 80]!r}")
            break
        records.append(text[at:end].rstrip("\r"))
        position = end + 1
    return records, "".join(rest), warnings


def _check_path(path: str, what: str) -> None:
    if not isinstance(path, str) or not path.startswith("/"):
        raise UsageError(f"{what}: path must be absolute, got {path!r}")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in path):
        raise UsageError(f"{what}: path {path!r} contains control characters")
