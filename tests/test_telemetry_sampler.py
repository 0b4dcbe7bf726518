"""The device-side sampler run for real: /bin/sh (dash here), bash, busybox sh and mksh (Android's shell) read files a
thread rewrites, deletes and recreates while the script runs; plus the parser on hand-made and cut-off outputs."""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import statistics
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from farmbench.errors import RunnerError, UsageError
from farmbench.telemetry.sampler import (
    Channel,
    SamplerSpec,
    busy_loop_argv,
    parse_file_listing,
    parse_sampler_output,
    read_files_script,
    sampler_script,
    wrap_with_sampler,
)
from farmbench.transports.local import LocalTransport
from farmbench.transports.quoting import join


def _shell(*argv: str) -> object:
    # /bin/sh is what every board has; the others are extra coverage (busybox: boards, mksh: Android's sh).
    # .ci/setup installs busybox and mksh: under CI=true a missing shell runs anyway and fails, it is not skipped.
    present = shutil.which(argv[0]) is not None or argv == ("sh",)
    in_ci = os.environ.get("CI", "").lower() == "true"
    reason = f"{argv[0]} is not installed (apt-get install {argv[0]})"
    return pytest.param(argv, id=" ".join(argv), marks=[] if present or in_ci else pytest.mark.skip(reason=reason))


SHELLS = [_shell("sh"), _shell("bash"), _shell("busybox", "sh"), _shell("mksh")]


class Writer(threading.Thread):
    """Rewrites ``current`` every 30 ms with an increasing value (atomically, as sysfs reads are), and deletes
    ``flaky`` for a while in the middle of the run, then recreates it."""

    def __init__(self, directory: Path) -> None:
        super().__init__(daemon=True)
        self.current = directory / "current_now"
        self.flaky = directory / "flaky"
        self.written: list[int] = []
        self.stop = threading.Event()
        self._write(self.current, "0")
        self._write(self.flaky, "present")

    @staticmethod
    def _write(path: Path, text: str) -> None:
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text(text + "\n")
        os.replace(temporary, path)

    def run(self) -> None:
        started = time.monotonic()
        value = 0
        while not self.stop.is_set():
            value += 1
            self._write(self.current, str(value))
            self.written.append(value)
            elapsed = time.monotonic() - started
            if 0.4 < elapsed < 0.9:
                self.flaky.unlink(missing_ok=True)
            elif elapsed >= 0.9 and not self.flaky.exists():
                self._write(self.flaky, "back")
            time.sleep(0.03)


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[Writer]:
    thread = Writer(tmp_path)
    thread.start()
    yield thread
    thread.stop.set()
    thread.join(timeout=5)


def _spec(directory: Path, rate_hz: float = 20.0, command: str | None = None) -> SamplerSpec:
    return SamplerSpec(channels=(Channel("current", str(directory / "current_now")),
                                 Channel("flaky", str(directory / "flaky")),
                                 Channel("missing", str(directory / "never-there"))),
                       rate_hz=rate_hz, command=command)


@pytest.mark.parametrize("shell", SHELLS)
def test_sampler_reads_changing_files_marks_the_benchmark_and_keeps_its_exit_code(
        shell: tuple[str, ...], tmp_path: Path, writer: Writer) -> None:
    spec = _spec(tmp_path)
    benchmark = ["sh", "-c", 'echo "hello world"; sleep 1.2; echo bye; exit 3']
    command = wrap_with_sampler(spec, benchmark, idle_s=0.4, shell=shell)
    started = time.monotonic()
    done = LocalTransport().run(command.argv, timeout_s=30)
    took_s = time.monotonic() - started
    run = parse_sampler_output(done.stdout, spec, command.tag)

    assert done.rc == 3 and run.exit_code == 3, done.stderr
    assert done.stderr == ""
    assert run.output == "hello world\nbye\n"
    assert run.warnings == ()
    assert run.period_s == 0.05
    # The sampler stops with the benchmark: nothing keeps the command alive much past idle + benchmark.
    assert took_s < 0.4 + 1.2 + 1.5, took_s
    idle_s, start_s, end_s = run.markers["idle"], run.markers["start"], run.markers["end"]
    assert start_s - idle_s == pytest.approx(0.4, abs=0.15)
    assert end_s - start_s == pytest.approx(1.2, abs=0.3)

    times = [sample.t_s for sample in run.samples]
    assert times == sorted(times)
    assert times[0] <= start_s and times[-1] >= end_s  # a sample before the run and one after it ended
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert statistics.median(gaps) == pytest.approx(0.05, abs=0.02)
    assert sum(1 for t in times if start_s <= t <= end_s) >= 12

    currents = [int(value) for _, value in run.column("current") if value is not None]
    assert len(set(currents)) >= 10  # it saw the file change
    assert set(currents) <= set(writer.written) | {0}
    assert currents == sorted(currents)  # in order: no stale or torn reads
    flaky = [value for _, value in run.column("flaky")]
    assert "present" in flaky and "back" in flaky and None in flaky  # gone for a while, sampler kept going
    first_gap = flaky.index(None)
    assert "back" in flaky[first_gap:]
    assert all(value is None for _, value in run.column("missing"))


def test_sampler_composes_with_a_remote_shell_quoting_the_argv_again(tmp_path: Path, writer: Writer) -> None:
    """What sshd and adbd do: the transport joins the argv into one command line for the device's shell."""
    spec = _spec(tmp_path)
    command = wrap_with_sampler(spec, ["sh", "-c", "printf '%s\\n' \"$1\"; exit 7", "x", "it's $HOME; `id`"],
                                idle_s=0.1)
    done = LocalTransport().run(["sh", "-c", join(command.argv)], timeout_s=30)
    run = parse_sampler_output(done.stdout, spec, command.tag)
    assert done.rc == 7 and run.exit_code == 7
    assert run.output == "it's $HOME; `id`\n"
    assert len(run.samples) >= 2


def test_paths_with_shell_characters_are_read_literally_and_run_nothing(tmp_path: Path) -> None:
    nasty = tmp_path / "it's a $(touch pwned) `touch pwned2` ; file"
    nasty.write_text("42\n")
    spec = SamplerSpec(channels=(Channel("nasty", str(nasty)),), rate_hz=50)
    command = wrap_with_sampler(spec, ["true"], idle_s=0.05)
    done = LocalTransport().run(command.argv, timeout_s=30)
    run = parse_sampler_output(done.stdout, spec, command.tag)
    assert done.rc == 0 and run.exit_code == 0
    assert {value for _, value in run.column("nasty")} == {"42"}
    assert not (Path.cwd() / "pwned").exists() and not (tmp_path / "pwned").exists()
    assert not (Path.cwd() / "pwned2").exists()


def test_command_output_is_kept_on_the_line_and_a_broken_command_does_not_stop_sampling(tmp_path: Path) -> None:
    (tmp_path / "v").write_text("1\n")
    spec = SamplerSpec(channels=(Channel("v", str(tmp_path / "v")),), rate_hz=20,
                       command="printf ' 3V3_SYS_A current(1)=0.1A\\n\\tVDD_CORE_V volt(15)=0.8V\\n'")
    command = wrap_with_sampler(spec, ["sleep", "0.3"], idle_s=0.1)
    run = parse_sampler_output(LocalTransport().run(command.argv, timeout_s=30).stdout, spec, command.tag)
    assert run.exit_code == 0 and len(run.samples) >= 4
    assert {s.command_output for s in run.samples} == {"3V3_SYS_A current(1)=0.1A;\tVDD_CORE_V volt(15)=0.8V"}

    broken = SamplerSpec(channels=spec.channels, rate_hz=20, command="echo ) 'unbalanced")
    command = wrap_with_sampler(broken, ["sh", "-c", "sleep 0.3; exit 5"], idle_s=0.1)
    done = LocalTransport().run(command.argv, timeout_s=30)
    run = parse_sampler_output(done.stdout, broken, command.tag)
    assert done.rc == 5 and run.exit_code == 5
    assert len(run.samples) >= 4
    assert {s.command_output for s in run.samples} == {None}
    assert {value for _, value in run.column("v")} == {"1"}


def test_without_fractional_sleep_the_sampler_ticks_every_second_and_says_so(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake_sleep = bin_dir / "sleep"
    # An old busybox built without FEATURE_FLOAT_SLEEP: whole seconds only.
    fake_sleep.write_text('#!/bin/sh\ncase "$1" in *.*) echo "sleep: invalid number \'$1\'" >&2; exit 1;; esac\n'
                          f'exec {shutil.which("sleep")} "$1"\n')
    fake_sleep.chmod(0o755)
    (tmp_path / "v").write_text("1\n")
    spec = SamplerSpec(channels=(Channel("v", str(tmp_path / "v")),), rate_hz=20)
    command = wrap_with_sampler(spec, ["sh", "-c", "exec sleep 2"], idle_s=0.1)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    started = time.monotonic()
    done = LocalTransport(env=env).run(command.argv, timeout_s=30)
    run = parse_sampler_output(done.stdout, spec, command.tag)
    assert done.rc == 0, done.stderr
    assert run.warnings == ("no-fractional-sleep",) and run.period_s == 1.0
    # Not a busy loop: one tick per second over 1 s idle (0.1 s rounded up) + 2 s, plus the final one.
    assert 3 <= len(run.samples) <= 5, run.samples
    times = [sample.t_s for sample in run.samples[:-1]]
    assert all(b - a >= 0.9 for a, b in itertools.pairwise(times)), times
    assert time.monotonic() - started < 6


def test_busy_loop_keeps_cpus_busy_for_its_duration_then_ends() -> None:
    started = time.monotonic()
    done = LocalTransport().run(busy_loop_argv(0.5, 2), timeout_s=30)
    took_s = time.monotonic() - started
    assert done.rc == 0, done.stderr
    assert 0.4 < took_s < 3.0


def test_parser_splices_sampler_lines_out_of_benchmark_output_and_tolerates_damage() -> None:
    spec = SamplerSpec(channels=(Channel("a", "/x/a"), Channel("b", "/x/b")), rate_hz=10)
    tag = "fbs0123abcd"
    text = (f"{tag}\tH\t1\t2\t0\t10\t1\r\n"
            f"{tag}\tM\tidle\t100.00\n"
            f"{tag}\tS\t100.00\t5\tNot charging\n"
            "benchmark says: hal"  # the benchmark's line, interrupted mid-line by a sampler write
            f"{tag}\tS\t100.10\t\t \n"
            "f a line\n"
            f"{tag}\tS\tgarbage\t1\t2\n"
            f"{tag}\tS\t100.20\t1\n"
            f"{tag}\tM\tstart\t100.20\n"
            f"{tag}\tM\tend\t101.50\t0\n"
            "tail\n"
            f"{tag}\tS\t101.5")
    run = parse_sampler_output(text, spec, tag)
    assert run.output == "benchmark says: half a line\ntail\n"
    assert [(s.t_s, s.values) for s in run.samples] == [(100.0, ("5", "Not charging")), (100.1, (None, None))]
    assert run.window == (100.2, 101.5) and run.idle_window == (100.0, 100.2)
    assert run.exit_code == 0 and run.period_s == 0.1
    assert len(run.warnings) == 3
    assert any("truncated" in w for w in run.warnings)
    assert sum("malformed" in w for w in run.warnings) == 2

    cut = parse_sampler_output(f"{tag}\tM\tidle\t5.00\n{tag}\tM\tstart\t6.00\n{tag}\tS\t6.10\t1\t2\n", spec, tag)
    assert cut.window is None and cut.exit_code is None and len(cut.samples) == 1

    other = SamplerSpec(channels=(Channel("a", "/x/a"),), rate_hz=10)
    with pytest.raises(RunnerError, match="expected format 1 with 1 channels"):
        parse_sampler_output(text, other, tag)


def test_spec_and_script_refuse_what_would_break_them() -> None:
    with pytest.raises(UsageError, match="absolute"):
        Channel("a", "relative/path")
    with pytest.raises(UsageError, match="control"):
        Channel("a", "/x/a\nb")
    with pytest.raises(UsageError, match="channel name"):
        Channel("a b", "/x/a")
    with pytest.raises(UsageError, match="rate_hz"):
        SamplerSpec(channels=(Channel("a", "/x/a"),), rate_hz=200)
    with pytest.raises(UsageError, match="more than once"):
        SamplerSpec(channels=(Channel("a", "/x/a"), Channel("a", "/x/b")))
    with pytest.raises(UsageError, match="nothing to sample"):
        SamplerSpec()
    spec = SamplerSpec(channels=(Channel("a", "/x/a"),))
    with pytest.raises(UsageError, match="tag"):
        sampler_script(spec, ["true"], idle_s=0, tag="bad tag")
    with pytest.raises(UsageError, match="benchmark"):
        sampler_script(spec, [], idle_s=0, tag="fbs00000000")
    with pytest.raises(UsageError, match="listing pattern"):
        read_files_script(["/sys/class/thermal zone*/temp"])


def test_script_stays_small_enough_for_old_adb_shell_lines() -> None:
    """Pre-Nougat adbd takes at most 4096 bytes of shell command; a battery spec and a benchmark fit easily."""
    channels = tuple(Channel(f"c{i}", f"/sys/class/power_supply/battery/file{i}") for i in range(6))
    command = wrap_with_sampler(SamplerSpec(channels=channels), ["/data/local/tmp/benchmark_model",
                                                                 "--graph=/data/local/tmp/m.tflite"], idle_s=5)
    assert len(join(command.argv)) < 3000


def test_file_listing_reads_each_file_once(tmp_path: Path) -> None:
    for zone, (kind, temp) in enumerate([("cpu-thermal", "45000"), ("Not a cpu", "")]):
        (tmp_path / f"thermal_zone{zone}").mkdir()
        (tmp_path / f"thermal_zone{zone}" / "type").write_text(kind + "\n")
        (tmp_path / f"thermal_zone{zone}" / "temp").write_text(temp)
    script = read_files_script([f"{tmp_path}/thermal_zone*/type", f"{tmp_path}/thermal_zone*/temp",
                                f"{tmp_path}/nothing*/here"])
    files = parse_file_listing(LocalTransport().run(["sh", "-c", script], timeout_s=30).check().stdout)
    assert files[f"{tmp_path}/thermal_zone0/type"].value == "cpu-thermal"
    assert files[f"{tmp_path}/thermal_zone1/type"].value == "Not a cpu"
    assert files[f"{tmp_path}/thermal_zone0/temp"].value == "45000"
    assert files[f"{tmp_path}/thermal_zone1/temp"].value is None
    assert len(files) == 4 and all(f.readable for f in files.values())


def test_the_sampling_loop_ends_when_its_shell_is_killed(tmp_path: Path) -> None:
    """SIGKILL (a `timeout -k` on a board) reaches only the script's shell: the loop must not sample on forever."""
    (tmp_path / "v").write_text("1\n")
    spec = SamplerSpec(channels=(Channel("v", str(tmp_path / "v")),), rate_hz=50)
    command = wrap_with_sampler(spec, ["sleep", "30"], idle_s=0)
    out = tmp_path / "out"
    with out.open("w") as stdout:  # a file, not a pipe: no SIGPIPE would stop the loop
        process = subprocess.Popen(command.argv, stdout=stdout, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        time.sleep(0.5)
        assert out.read_text().count("\tS\t") >= 5
        process.kill()  # the shell only, as kill -9 <pid> does
        process.wait(timeout=10)
        time.sleep(0.3)
        lines = out.read_text().count("\tS\t")
        time.sleep(0.5)
        assert out.read_text().count("\tS\t") == lines
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the orphaned `sleep 30` benchmark
