"""farmbench.config: TOML documents that know their lines, the Field schema, and the sweep model."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest

from farmbench.config import (
    VARIANT_FIELDS,
    Field,
    TomlDocument,
    VariantGrid,
    default_sweep,
    load_sweep,
    merge_overrides,
    sweep_from_values,
    validate_table,
)
from farmbench.errors import EXIT_USAGE, ConfigError


def write(tmp_path: Path, text: str, name: str = "sweep.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load_error(tmp_path: Path, text: str) -> ConfigError:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_sweep(path)
    assert info.value.path == str(path)
    return info.value


# --- TomlDocument -----------------------------------------------------------------------------------------------


def test_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, 'name = "x"\n[variants]\nwidth = [0.5,\nresolution = 128\n')
    with pytest.raises(ConfigError) as info:
        TomlDocument.load(path)
    assert info.value.path == str(path)
    assert info.value.line == 4
    assert str(info.value).startswith(f"{path}:4: invalid TOML")
    assert "(at line" not in str(info.value)


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="file not found") as info:
        TomlDocument.load(path)
    assert str(path) in str(info.value)


def test_directory_is_unreadable_with_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read") as info:
        TomlDocument.load(tmp_path)
    assert info.value.path == str(tmp_path)


def test_config_error_exits_with_usage_code(tmp_path: Path) -> None:
    error = load_error(tmp_path, "[variants]\nwidth = 0\n")
    assert error.exit_code == EXIT_USAGE == 2


def test_line_of_tracks_tables_dotted_and_quoted_keys() -> None:
    doc = TomlDocument.from_string(
        "\n".join(
            [
                "name = 'x'  # 1",
                "[other]",
                "family = 'not this one'",
                "text = '''",
                "[variants]",
                "family = 'inside a string'",
                "'''",
                "[a.b]",
                'c.d = 1  # "[not a header]"',
                '"key with = and . " = 2',
                "[variants]",  # 11
                "family = [",
                "  'mobilenet_v2',  # a comment with family = x",
                "]",
                "width = [0.5, 1.0]",
                "point = { x = 1, y = 2 }",
            ]
        )
    )
    assert doc.line_of(("name",)) == 1
    assert doc.line_of(("other", "family")) == 3
    assert doc.line_of(("variants",)) == 11
    assert doc.line_of(("variants", "family")) == 12
    assert doc.line_of(("variants", "width")) == 15
    assert doc.line_of(("a", "b", "c", "d")) == 9
    assert doc.line_of(("a", "b", "c")) == 9  # implicitly defined by the dotted key
    assert doc.line_of(("a",)) == 8
    assert doc.line_of(("a", "b", "key with = and . ")) == 10
    # Inside a list or an inline table, the enclosing key's line stands in.
    assert doc.line_of(("variants", "width", 1)) == 15
    assert doc.line_of(("variants", "point", "x")) == 16
    # A key that is not there has no line, not the line of its table.
    assert doc.line_of(("variants", "resolution")) is None
    assert doc.line_of(("missing",)) is None


def test_line_of_indexes_arrays_of_tables() -> None:
    doc = TomlDocument.from_string(
        "\n".join(
            [
                "[[device]]",  # 1
                "name = 'pi'",
                "[device.ssh]",  # 3: belongs to device[0]
                "host = 'pi.local'",
                "",
                "[[device]]",  # 6
                "name = 'phone'",
                "[[device.port]]",  # 8
                "n = 1",
                "[[device.port]]",  # 10
                "n = 2",
            ]
        )
    )
    assert doc.data["device"][1]["port"][1]["n"] == 2
    assert doc.line_of(("device",)) == 1
    assert doc.line_of(("device", 0, "name")) == 2
    assert doc.line_of(("device", 0, "ssh", "host")) == 4
    assert doc.line_of(("device", 1)) == 6
    assert doc.line_of(("device", 1, "name")) == 7
    assert doc.line_of(("device", 1, "port", 1, "n")) == 11
    assert doc.line_of(("device", 2)) is None


# --- validate_table ---------------------------------------------------------------------------------------------

FIELDS = (
    Field("host", "str", required=True),
    Field("port", "int", default=22, min_value=1),
    Field("scale", "float", default=1.0),
    Field("enabled", "bool", default=True),
    Field("key_file", "path"),
    Field("modes", "str_list", default=("a",), choices=("alpha", "beta")),
)


def test_validate_table_fills_defaults_and_resolves_paths(tmp_path: Path) -> None:
    doc = TomlDocument.load(write(tmp_path, "[dev]\nhost = 'h'\nscale = 2\nkey_file = 'keys/id'\n"))
    values = validate_table(doc, ("dev",), doc.data["dev"], FIELDS)
    assert values == {
        "host": "h",
        "port": 22,
        "scale": 2.0,
        "enabled": True,
        "key_file": (tmp_path / "keys" / "id").resolve(),
        "modes": ["a"],
    }
    assert isinstance(values["scale"], float)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("port = true", "expected an integer, got bool True"),
        ("port = 2.0", "expected an integer, got float 2.0"),
        ("enabled = 1", "expected true or false, got int 1"),
        ("scale = 'x'", "expected a number, got str 'x'"),
        ("modes = ['alpha', 3]", "expected a list of strings, but item 2 is int 3"),
        ("modes = ['alpha', 'alpha']", "lists 'alpha' twice"),
    ],
)
def test_validate_table_rejects_wrong_types(line: str, message: str) -> None:
    doc = TomlDocument.from_string(f"[dev]\nhost = 'h'\n{line}\n", "dev.toml")
    with pytest.raises(ConfigError) as info:
        validate_table(doc, ("dev",), doc.data["dev"], FIELDS)
    assert info.value.line == 3
    assert info.value.key == f"dev.{line.split()[0]}"
    assert message in str(info.value)


def test_missing_required_key_points_at_table_header() -> None:
    doc = TomlDocument.from_string("x = 1\n\n[dev]\nport = 2\n", "dev.toml")
    with pytest.raises(ConfigError, match="required key is missing") as info:
        validate_table(doc, ("dev",), doc.data["dev"], FIELDS)
    assert (info.value.line, info.value.key) == (3, "dev.host")


def test_unknown_key_without_close_match_lists_valid_keys() -> None:
    doc = TomlDocument.from_string("[dev]\nhost = 'h'\nzzz = 1\n", "dev.toml")
    with pytest.raises(ConfigError) as info:
        validate_table(doc, ("dev",), doc.data["dev"], FIELDS)
    assert (info.value.line, info.value.key) == (3, "dev.zzz")
    assert info.value.hint == "valid keys here: host, port, scale, enabled, key_file, modes"


def test_field_rejects_unknown_kind() -> None:
    with pytest.raises(ValueError, match="kind"):
        Field("x", "string")


# --- sweeps -----------------------------------------------------------------------------------------------------


def test_unknown_key_gives_line_and_suggestion(tmp_path: Path) -> None:
    error = load_error(tmp_path, "[variants]\nwidth = [0.5]\nresolutoin = [128]\n")
    assert (error.line, error.key) == (3, "variants.resolutoin")
    assert error.hint == "did you mean 'resolution'?"
    assert "sweep.toml:3: variants.resolutoin: unknown key" in str(error)


def test_wrong_type_names_key_and_line(tmp_path: Path) -> None:
    error = load_error(tmp_path, "name = 'n'\n[variants]\nwidth = 'abc'\n")
    assert (error.line, error.key) == (3, "variants.width")
    assert "expected a list of numbers, got str 'abc'" in str(error)


def test_width_zero_is_rejected(tmp_path: Path) -> None:
    error = load_error(tmp_path, "[variants]\nwidth = [0.5, 0]\n")
    assert (error.line, error.key) == (2, "variants.width")
    assert "must be > 0" in str(error)


def test_resolution_below_32_is_rejected(tmp_path: Path) -> None:
    error = load_error(tmp_path, "[variants]\nresolution = [32, 31]\n")
    assert (error.line, error.key) == (2, "variants.resolution")
    assert "must be >= 32, got 31" in str(error)


def test_choice_typo_gets_a_suggestion(tmp_path: Path) -> None:
    error = load_error(tmp_path, "[variants]\nquant = ['fp32', 'int4']\n")
    assert error.key == "variants.quant"
    assert "'int4' is not one of fp32, fp16, dynamic-int8, int8, int8-io" in str(error)
    assert error.hint == "did you mean 'int8'?"


def test_scalars_and_comma_separated_strings_become_lists(tmp_path: Path) -> None:
    sweep = load_sweep(
        write(
            tmp_path,
            "[variants]\nfamily = 'mobilenet_v1, mobilenet_v3_large'\nwidth = 1\n"
            "resolution = '96,128'\nquant = 'int8'\nformat = 'onnx,tflite'\n",
        )
    )
    grid = sweep.variants
    assert grid.family == ("mobilenet_v1", "mobilenet_v3_large")
    assert grid.width == (1.0,)
    assert grid.resolution == (96, 128)
    assert grid.quant == ("int8",)
    assert grid.format == ("onnx", "tflite")


def test_absent_keys_take_defaults_and_name_defaults_to_stem(tmp_path: Path) -> None:
    path = write(tmp_path, "[variants]\n", name="nightly.toml")
    sweep = load_sweep(path)
    assert sweep.name == "nightly"
    assert sweep.path == path
    assert sweep.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert sweep.variants == VariantGrid(
        family=("mobilenet_v2",),
        width=(1.0,),
        resolution=(224,),
        quant=("fp32",),
        format=("tflite",),
        weights="random",
        seed=0,
        minimalistic=False,
        models=(),
    )


def test_missing_weights_file_is_named(tmp_path: Path) -> None:
    error = load_error(tmp_path, "[variants]\nseed = 1\nweights = 'w/mine.h5'\n")
    assert (error.line, error.key) == (3, "variants.weights")
    assert str(tmp_path / "w" / "mine.h5") in str(error)


def test_misspelt_weights_keyword_gets_a_suggestion(tmp_path: Path) -> None:
    error = load_error(tmp_path, "[variants]\nweights = 'imagenett'\n")
    assert error.hint == "did you mean 'imagenet'?"


def test_weights_and_models_are_relative_to_the_sweep_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "w.weights.h5").write_bytes(b"")
    (tmp_path / "m.onnx").write_bytes(b"")
    path = write(tmp_path, "[variants]\nweights = 'w.weights.h5'\nmodels = ['m.onnx']\n")
    monkeypatch.chdir("/")
    grid = load_sweep(path).variants
    assert grid.weights == str(tmp_path.resolve() / "w.weights.h5")
    assert grid.models == (tmp_path.resolve() / "m.onnx",)


@pytest.mark.parametrize(
    ("models", "message"),
    [("['absent.tflite']", "model file not found"), ("['model.pb']", "is not a .tflite or .onnx file")],
)
def test_models_must_exist_and_be_tflite_or_onnx(tmp_path: Path, models: str, message: str) -> None:
    (tmp_path / "model.pb").write_bytes(b"")
    error = load_error(tmp_path, f"[variants]\nmodels = {models}\n")
    assert (error.line, error.key) == (2, "variants.models[0]")
    assert message in str(error)


def test_a_grid_that_builds_nothing_is_rejected(tmp_path: Path) -> None:
    assert load_error(tmp_path, "[variants]\nquant = []\n").key == "variants.quant"
    assert load_error(tmp_path, "[variants]\nfamily = []\n").key == "variants.family"


def test_unknown_top_level_table_is_rejected(tmp_path: Path) -> None:
    error = load_error(tmp_path, "name = 'x'\n\n[extras]\nfoo = 1\n")
    assert (error.line, error.key) == (3, "extras")
    assert error.hint == "valid keys here: name, variants, run, check"


def test_variants_must_be_a_table(tmp_path: Path) -> None:
    error = load_error(tmp_path, "variants = 3\n")
    assert (error.line, error.key) == (1, "variants")


def test_variant_lines_found_after_other_content(tmp_path: Path) -> None:
    error = load_error(
        tmp_path,
        'name = """\n[variants]\nwidth = 0\n"""\n'  # a string that looks like the table, lines 1-4
        "variants.family = ['mobilenet_v2']\n"  # 5: a dotted key defines [variants] too
        "\n[variants.zzz]\n",  # 7: nested tables are not variant keys
    )
    assert (error.line, error.key) == (7, "variants.zzz")
    assert error.hint is not None and error.hint.startswith("valid keys here: family, width")


def test_default_sweep_loads() -> None:
    sweep = default_sweep()
    assert sweep.name == "default"
    grid = sweep.variants
    assert grid.family == ("mobilenet_v2", "mobilenet_v3_small")
    assert grid.width == (0.5,)
    assert grid.resolution == (128,)
    assert grid.quant == ("fp32", "fp16", "dynamic-int8", "int8")
    assert grid.format == ("tflite", "onnx")
    assert (grid.weights, grid.seed, grid.minimalistic, grid.models) == ("random", 0, False, ())


def test_variant_fields_describe_every_grid_member() -> None:
    assert [field.name for field in VARIANT_FIELDS] == [f.name for f in dataclasses.fields(VariantGrid)]
    assert all(field.doc for field in VARIANT_FIELDS)


# --- sweeps from flags ------------------------------------------------------------------------------------------


def test_sweep_from_values_validates_like_a_file() -> None:
    sweep = sweep_from_values("cli", {"width": "0.35,1", "resolution": None, "quant": ["fp32", "int8"]})
    assert sweep.path is None
    assert sweep.variants.width == (0.35, 1.0)
    assert sweep.variants.resolution == (224,)
    assert sweep.sha256 == sweep_from_values("cli", {"width": [0.35, 1.0], "quant": "fp32,int8"}).sha256
    assert sweep.sha256 != sweep_from_values("cli", {"width": [0.35]}).sha256


def test_sweep_from_values_errors_name_the_flag() -> None:
    with pytest.raises(ConfigError) as info:
        sweep_from_values("cli", {"resolution": "96,abc"})
    assert (info.value.path, info.value.line, info.value.key) == ("<command line>", None, "resolution")
    assert str(info.value) == "<command line>: resolution: expected a list of integers, got str '96,abc'"

    with pytest.raises(ConfigError) as info:
        sweep_from_values("cli", {"widht": 1.0})
    assert info.value.hint == "did you mean 'width'?"


def test_merge_overrides_replaces_given_keys_only(tmp_path: Path) -> None:
    path = write(tmp_path, "name = 'n'\n[variants]\nwidth = [0.5]\nresolution = [96]\n")
    sweep = load_sweep(path)
    assert merge_overrides(sweep, {"width": None}) is sweep

    merged = merge_overrides(sweep, {"width": "0.75", "resolution": None})
    assert merged.variants.width == (0.75,)
    assert merged.variants.resolution == (96,)
    assert (merged.name, merged.path) == ("n", path)
    assert merged.sha256 != sweep.sha256

    with pytest.raises(ConfigError, match="must be > 0") as info:
        merge_overrides(sweep, {"width": 0})
    assert info.value.key == "width"


def test_run_table_is_validated_with_locations(tmp_path: Path) -> None:
    error = load_error(tmp_path, "[variants]\nfamily = ['mobilenet_v2']\n\n[run]\nthreads = [0]\n")
    assert (error.line, error.key) == (5, "run.threads")
    error = load_error(tmp_path, "[run]\nwarmup_run = 3\n")
    assert error.key == "run.warmup_run" and error.hint is not None and "warmup_runs" in error.hint
    error = load_error(tmp_path, "[run]\nmin_s = 5.0\nmax_s = 1.0\n")
    assert error.key == "run.min_s" and "max_s" in error.message


def test_run_table_defaults_and_values(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text("[run]\ndevices = ['local', 'ssh://pi@board:2222']\nthreads = '1,4'\nrepeats = 2\n")
    sweep = load_sweep(path)
    assert sweep.run.devices == ("local", "ssh://pi@board:2222")
    assert sweep.run.threads == (1, 4)
    assert sweep.run.repeats == 2
    assert sweep.run.runtime == ("auto",) and sweep.run.warmup_runs == 5


# --- [check] ------------------------------------------------------------------------------------------------------


def test_check_table_sets_thresholds_and_defaults_the_rest(tmp_path: Path) -> None:
    sweep = load_sweep(write(tmp_path, "[check]\nalpha = 0.05\nlatency_floor_us = 25\ndrift_top1_points = 2.5\n"))
    assert (sweep.check.alpha, sweep.check.latency_floor_us, sweep.check.drift_top1_points) == (0.05, 25.0, 2.5)
    assert (sweep.check.latency_threshold_pct, sweep.check.energy_threshold_pct) == (5.0, 10.0)
    assert default_sweep().check.alpha == 0.01


@pytest.mark.parametrize(("text", "line", "key", "message"), [
    ("name = 'x'\n[check]\nlatency_treshold_pct = 3\n", 3, "check.latency_treshold_pct", "unknown key"),
    ("[check]\nalpha = 1.5\n", 2, "check.alpha", "must be < 1"),
    ("[check]\nalpha = 0\n", 2, "check.alpha", "must be > 0"),
    ("[check]\n\nenergy_floor_mj = -0.5\n", 3, "check.energy_floor_mj", "must be >= 0"),
    ("[check]\nlatency_threshold_pct = 'five'\n", 2, "check.latency_threshold_pct", "expected a number"),
])
def test_check_table_errors_name_file_line_and_key(tmp_path: Path, text: str, line: int, key: str,
                                                   message: str) -> None:
    error = load_error(tmp_path, text)
    assert (error.line, error.key) == (line, key) and message in str(error)
    assert str(error).startswith(f"{tmp_path / 'sweep.toml'}:{line}: {key}: ")
    if key.endswith("treshold_pct"):
        assert error.hint == "did you mean 'latency_threshold_pct'?"


def test_variant_flags_keep_the_files_run_and_check_tables(tmp_path: Path) -> None:
    sweep = load_sweep(write(tmp_path, "[run]\nrepeats = 7\n[check]\nalpha = 0.02\n"))
    merged = merge_overrides(sweep, {"quant": "int8"})
    assert merged.variants.quant == ("int8",) and merged.run.repeats == 7 and merged.check.alpha == 0.02
