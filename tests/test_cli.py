"""The command line as users meet it: `python -m farmbench ...` in a real process, real exit codes and streams.

Only two tests here start a build worker (and so import TensorFlow): the ImageNet ones, which fail before any
training. Everything else exits before a model is built.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from conftest import describe, run_cli
from farmbench import __version__

DEFAULT_SWEEP_SIZE = 16  # farmbench/sweeps/default.toml: 2 families x 1 width x 1 resolution x 4 quants x 2 formats


def test_version() -> None:
    proc = run_cli("--version")
    assert proc.returncode == 0, describe(proc)
    assert proc.stdout.strip() == f"farmbench, version {__version__}"


def test_help_lists_commands() -> None:
    proc = run_cli("--help")
    assert proc.returncode == 0, describe(proc)
    commands = proc.stdout.split("Commands:", 1)[1]
    for command in ("build", "cache", "completion"):
        assert f"\n  {command} " in commands, describe(proc)


def test_unknown_option_is_a_usage_error() -> None:
    proc = run_cli("build", "--bogus")
    assert proc.returncode == 2, describe(proc)
    assert "--bogus" in proc.stderr


# --- build --plan -----------------------------------------------------------------------------------------------


def test_plan_of_the_default_sweep(empty_cache: Path) -> None:
    proc = run_cli("build", "--plan", cache_dir=empty_cache)
    assert proc.returncode == 0, describe(proc)
    assert f"{DEFAULT_SWEEP_SIZE} variants in sweep 'default'" in proc.stdout
    listed = [line.split()[0] for line in proc.stdout.splitlines() if line.startswith("mobilenet_")]
    assert len(listed) == len(set(listed)) == DEFAULT_SWEEP_SIZE
    assert "mobilenet_v2_a0.5_r128_int8.onnx" in listed
    assert "mobilenet_v3_small_a0.5_r128_fp32.tflite" in listed
    assert list((empty_cache).iterdir()) == []  # a plan builds nothing

    as_json = run_cli("build", "--plan", "--json", cache_dir=empty_cache)
    assert as_json.returncode == 0, describe(as_json)
    rows = json.loads(as_json.stdout)
    assert [row["name"] for row in rows] == listed


def test_plan_shows_imagenet_status() -> None:
    proc = run_cli("build", "--plan", "--family", "mobilenet_v1", "--width", "0.25,0.3", "--resolution", "128")
    assert proc.returncode == 0, describe(proc)
    status = {line.split()[0]: " ".join(line.split()[1:]) for line in proc.stdout.splitlines()
              if line.startswith("mobilenet_")}
    assert status == {"mobilenet_v1_a0.25_r128_fp32.tflite": "published",
                      "mobilenet_v1_a0.3_r128_fp32.tflite": "none"}
    assert "2 variants" in proc.stdout


def test_list_flags_repeat_or_take_commas() -> None:
    proc = run_cli("build", "--plan", "--json", "--family", "mobilenet_v2", "--width", "0.35", "--width", "0.5",
                   "--resolution", "96,128", "--quant", "fp32,int8-io", "--format", "tflite", "--format", "onnx")
    assert proc.returncode == 0, describe(proc)
    assert len(json.loads(proc.stdout)) == 2 * 2 * 2 * 2


@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [
        ("--width", "0", ["width", "must be > 0"]),
        ("--quant", "int9", ["quant", "'int9'", "did you mean 'int8'?"]),
        ("--resolution", "31", ["resolution", "must be >= 32"]),
        ("--family", "mobilenet_v4", ["family", "'mobilenet_v4'"]),
        ("--format", "pb", ["format", "'pb'"]),
        ("--width", "wide", ["width", "expected a list of numbers"]),
    ],
)
def test_bad_flag_values_exit_2_naming_the_flag(flag: str, value: str, expected: list[str]) -> None:
    proc = run_cli("build", "--plan", flag, value)
    assert proc.returncode == 2, describe(proc)
    assert proc.stderr.startswith("error: <command line>: "), describe(proc)
    for text in expected:
        assert text in proc.stderr, describe(proc)
    assert "Traceback" not in proc.stderr


# --- sweep files ------------------------------------------------------------------------------------------------


def test_sweep_file_with_a_misspelt_key(tmp_path: Path) -> None:
    sweep = tmp_path / "file.toml"
    sweep.write_text('name = "typo"\n[variants]\nfamily = ["mobilenet_v2"]\nresolutoin = [96]\n')
    proc = run_cli("build", "--plan", "--sweep", sweep)
    assert proc.returncode == 2, describe(proc)
    assert f"{sweep}:4:" in proc.stderr, describe(proc)
    assert "file.toml:4" in proc.stderr
    assert "resolutoin" in proc.stderr
    assert "did you mean 'resolution'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_sweep_file_syntax_error_names_the_line(tmp_path: Path) -> None:
    sweep = tmp_path / "broken.toml"
    sweep.write_text('name = "x"\n[variants]\nfamily = ["mobilenet_v2"\nwidth = [0.5]\n')
    proc = run_cli("build", "--plan", "--sweep", sweep)
    assert proc.returncode == 2, describe(proc)
    assert f"{sweep}:4: invalid TOML" in proc.stderr, describe(proc)
    assert "Traceback" not in proc.stderr


def test_missing_sweep_file(tmp_path: Path) -> None:
    proc = run_cli("build", "--plan", "--sweep", tmp_path / "nope.toml")
    assert proc.returncode == 2, describe(proc)
    assert f"{tmp_path / 'nope.toml'}: file not found" in proc.stderr


def test_flags_override_a_sweep_file(tmp_path: Path) -> None:
    sweep = tmp_path / "s.toml"
    sweep.write_text('[variants]\nfamily = ["mobilenet_v2"]\nwidth = [0.5]\nresolution = [128]\n')
    proc = run_cli("build", "--plan", "--json", "--sweep", sweep, "--width", "0.35")
    assert proc.returncode == 0, describe(proc)
    assert [row["name"] for row in json.loads(proc.stdout)] == ["mobilenet_v2_a0.35_r128_fp32.tflite"]


# --- cache ------------------------------------------------------------------------------------------------------


def test_cache_ls_on_an_empty_cache(empty_cache: Path) -> None:
    proc = run_cli("cache", "ls", cache_dir=empty_cache)
    assert proc.returncode == 0, describe(proc)
    assert f"0 artifacts, 0 B in {empty_cache}" in proc.stdout
    as_json = run_cli("cache", "ls", "--json", cache_dir=empty_cache)
    assert as_json.returncode == 0 and json.loads(as_json.stdout) == []


def test_cache_dir_flag_beats_the_environment(empty_cache: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    proc = run_cli("cache", "ls", "--cache-dir", other, cache_dir=empty_cache)
    assert proc.returncode == 0, describe(proc)
    assert f"in {other}" in proc.stdout


def test_cache_prune_needs_criteria(empty_cache: Path) -> None:
    proc = run_cli("cache", "prune", cache_dir=empty_cache)
    assert proc.returncode == 2, describe(proc)
    assert "say what to prune" in proc.stderr
    assert "--all" in proc.stderr  # the hint lists the criteria


def test_cache_prune_all_of_an_empty_cache(empty_cache: Path) -> None:
    proc = run_cli("cache", "prune", "--all", cache_dir=empty_cache)
    assert proc.returncode == 0, describe(proc)
    assert "removed 0 artifacts" in proc.stdout


# --- completion -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_script(shell: str) -> None:
    proc = run_cli("completion", shell)
    assert proc.returncode == 0, describe(proc)
    assert "_FARMBENCH_COMPLETE" in proc.stdout


def test_completion_of_an_unknown_shell() -> None:
    proc = run_cli("completion", "tcsh")
    assert proc.returncode == 2, describe(proc)


# --- environment defaults ---------------------------------------------------------------------------------------


def test_env_var_sets_a_build_flag(empty_cache: Path, tmp_path: Path) -> None:
    """FARMBENCH_<COMMAND>_<OPTION> (click's auto_envvar_prefix) works for flags and for list options.

    If the variable were ignored this would try to build ImageNet weights that do not exist and exit 1.
    """
    keras_home = tmp_path / "keras"
    keras_home.mkdir()
    proc = run_cli("build", "--weights", "imagenet", "--family", "mobilenet_v1", "--resolution", "128",
                   cache_dir=empty_cache,
                   env={"FARMBENCH_BUILD_PLAN": "1", "FARMBENCH_BUILD_WIDTH": "0.3", "KERAS_HOME": str(keras_home)})
    assert proc.returncode == 0, describe(proc)
    assert "mobilenet_v1_a0.3_r128_fp32.tflite" in proc.stdout
    assert "1 variants" in proc.stdout


def test_env_var_sets_the_cache_dir(empty_cache: Path) -> None:
    proc = run_cli("cache", "ls", cache_dir=empty_cache)  # run_cli passes the directory as FARMBENCH_CACHE_DIR
    assert proc.returncode == 0, describe(proc)
    assert f"in {empty_cache}" in proc.stdout


# --- ImageNet weights that cannot be had ------------------------------------------------------------------------


def _no_entries(cache_dir: Path) -> bool:
    artifacts = cache_dir / "artifacts"
    return not artifacts.exists() or not [p for p in artifacts.iterdir() if not p.name.startswith(".")]


@pytest.mark.slow
def test_imagenet_weights_offline_fail_cleanly(empty_cache: Path, tmp_path: Path) -> None:
    keras_home = tmp_path / "keras"
    keras_home.mkdir()
    started = time.monotonic()
    proc = run_cli("build", "--weights", "imagenet", "--family", "mobilenet_v2", "--width", "0.35",
                   "--resolution", "96", "--quant", "fp32", "--format", "tflite", "--jobs", "1",
                   cache_dir=empty_cache, env={"KERAS_HOME": str(keras_home)}, timeout=180)
    elapsed = time.monotonic() - started
    assert proc.returncode == 1, describe(proc)
    assert elapsed < 120, f"took {elapsed:.0f} s"
    assert "ImageNet weights" in proc.stderr, describe(proc)
    assert "--weights random" in proc.stderr, describe(proc)
    assert "Traceback" not in proc.stderr, describe(proc)
    assert _no_entries(empty_cache)
    assert list(keras_home.glob("models/*")) == []  # no partial download left behind


def test_imagenet_weights_for_an_unpublished_width(empty_cache: Path, tmp_path: Path) -> None:
    keras_home = tmp_path / "keras"
    keras_home.mkdir()
    started = time.monotonic()
    proc = run_cli("build", "--weights", "imagenet", "--family", "mobilenet_v1", "--width", "0.3",
                   "--resolution", "128", "--quant", "fp32", "--format", "tflite", "--jobs", "1",
                   cache_dir=empty_cache, env={"KERAS_HOME": str(keras_home)})
    elapsed = time.monotonic() - started
    assert proc.returncode == 1, describe(proc)
    assert elapsed < 60, f"took {elapsed:.0f} s"
    assert "no ImageNet weights for mobilenet_v1 at width 0.3" in proc.stderr, describe(proc)
    assert "--weights random" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert _no_entries(empty_cache)
