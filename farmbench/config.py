"""TOML configuration: a document that knows where each key is, a small declarative schema, and the sweep model.

Every problem with a config file is a :class:`~farmbench.errors.ConfigError` that names the file, the line and the
dotted key, and whose hint says what to write instead. Unknown keys are errors, never ignored: a misspelt
``resolutoin`` that silently fell back to the default would benchmark the wrong models.

A sweep file describes the grid of MobileNet variants to build (see ``farmbench/sweeps/default.toml``)::

    name = "nightly-small"
    [variants]
    family = ["mobilenet_v2", "mobilenet_v3_small"]
    width = [0.35, 1.0]
    resolution = [96, 128]

Each table of a sweep file is described by a tuple of :class:`Field` (``VARIANT_FIELDS``), registered in
``SWEEP_TABLES``; adding a table means adding a Field tuple there and a member to :class:`Sweep`.
"""

from __future__ import annotations

import bisect
import dataclasses
import difflib
import hashlib
import importlib.resources
import json
import math
import re
import reprlib
import tomllib
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from farmbench.errors import ConfigError
from farmbench.variants.spec import FAMILIES, FORMATS, QUANT_MODES

if TYPE_CHECKING:
    from farmbench.results.compare import Thresholds

KeyPath = tuple[str | int, ...]
"""Where a value sits in a document: table and key names, and list / array-of-tables indices."""

COMMAND_LINE = "<command line>"
"""Stands in for the file name when a sweep is built from flags."""

TOML_REFERENCE = "https://toml.io/en/v1.0.0"

# ---------------------------------------------------------------------------------------------------------------
# Documents


class TomlDocument:
    """A parsed TOML file plus its text, so errors can name the line where a key is defined."""

    def __init__(self, path: Path, text: str, data: dict[str, Any]) -> None:
        self.path = path
        self.text = text
        self.data = data

    @classmethod
    def load(cls, path: str | Path) -> TomlDocument:
        path = Path(path)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise ConfigError(
                "file not found", path=str(path), hint="check the path and the working directory"
            ) from None
        except OSError as err:
            raise ConfigError(f"cannot read the file: {err.strerror or err}", path=str(path)) from err
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ConfigError(
                "is not UTF-8 text",
                path=str(path),
                line=raw.count(b"\n", 0, err.start) + 1,
                hint="TOML files must be UTF-8; re-save the file with that encoding",
            ) from None
        return cls.from_string(text, path)

    @classmethod
    def from_string(cls, text: str, path: str | Path = "<string>") -> TomlDocument:
        path = Path(path)
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise _syntax_error(err, text, path) from None
        return cls(path, text, data)

    @property
    def base_dir(self) -> Path:
        """Relative paths in the document are relative to this directory (the cwd for ``<string>`` documents)."""
        return self.path.parent

    def resolve_path(self, value: str) -> Path:
        """An absolute path for ``value``, read relative to the document's directory as users expect."""
        return (self.base_dir / Path(value).expanduser()).resolve()

    def line_of(self, key_path: KeyPath) -> int | None:
        """The 1-based line where ``key_path`` is defined, or None if the text does not show it.

        A key inside an inline table or a list element has no line of its own: the line of the enclosing
        ``key = value`` stands in for it.
        """
        lines, assigned = self._key_lines
        key_path = tuple(key_path)
        if key_path in lines:
            return lines[key_path]
        for end in range(len(key_path) - 1, 0, -1):
            if key_path[:end] in assigned:
                return lines[key_path[:end]]
        return None

    def error(
        self, message: str, key_path: KeyPath, *, hint: str | None = None, line_at: KeyPath | None = None
    ) -> ConfigError:
        """A ConfigError for ``key_path``, located at the line of ``line_at`` (default: the key itself)."""
        return ConfigError(
            message,
            path=str(self.path),
            line=self.line_of(key_path if line_at is None else line_at),
            key=format_key(key_path) or None,
            hint=hint,
        )

    @cached_property
    def _key_lines(self) -> tuple[dict[KeyPath, int], set[KeyPath]]:
        return _scan_key_lines(self.text)


def format_key(key_path: KeyPath) -> str:
    """``("variants", "models", 0)`` -> ``variants.models[0]``; keys that need quotes in TOML get them."""
    out = ""
    for part in key_path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            name = part if re.fullmatch(r"[A-Za-z0-9_-]+", part) else json.dumps(part)
            out += f".{name}" if out else name
    return out


_TOML_POSITION = re.compile(r"\s*\((?:at line (\d+), column (\d+)|at end of document)\)$")


def _syntax_error(err: tomllib.TOMLDecodeError, text: str, path: Path) -> ConfigError:
    # tomllib only reports the position inside its message text, e.g. "Invalid value (at line 3, column 8)".
    message = str(err)
    line: int | None = None
    match = _TOML_POSITION.search(message)
    if match:
        message = message[: match.start()]
        if match.group(1):
            line = int(match.group(1))
            message += f" (column {match.group(2)})"
        else:
            message += " (at end of file)"
            line = max(len(text.splitlines()), 1)
    return ConfigError(
        f"invalid TOML: {message[:1].lower()}{message[1:]}",
        path=str(path),
        line=line,
        hint=f"fix the syntax there; the TOML syntax is described at {TOML_REFERENCE}",
    )


# Finding lines. tomllib returns plain dicts without positions, so a light scan of the text maps each key path to
# the line that defines it. The text has already parsed, so the scanner can trust its syntax; it only has to skip
# strings, comments and multi-line values so that their content is never mistaken for a key or a header.


def _scan_key_lines(text: str) -> tuple[dict[KeyPath, int], set[KeyPath]]:
    """Lines of every table header and ``key = value`` in ``text``, and which paths are ``key = value``."""
    newlines = [i for i, ch in enumerate(text) if ch == "\n"]
    lines: dict[KeyPath, int] = {}
    assigned: set[KeyPath] = set()
    tables_seen: dict[KeyPath, int] = {}  # array-of-tables path -> how many elements so far
    table: KeyPath = ()
    pos = 0
    while pos < len(text):
        ch = text[pos]
        if ch in " \t\r\n":
            pos += 1
            continue
        if ch == "#":
            pos = _end_of_line(text, pos)
            continue
        line = bisect.bisect_left(newlines, pos) + 1
        if ch == "[":
            is_array = text.startswith("[[", pos)
            start = pos + (2 if is_array else 1)
            end = _find_unquoted(text, start, "]")
            table = _header_path(_key_parts(text[start:end]), is_array, tables_seen)
            _record(lines, table, line)
            pos = _end_of_line(text, end)
        else:
            end = _find_unquoted(text, pos, "=")
            path = table + _key_parts(text[pos:end])
            _record(lines, path, line)
            assigned.add(path)
            pos = _skip_value(text, end + 1)
    return lines, assigned


def _record(lines: dict[KeyPath, int], path: KeyPath, line: int) -> None:
    # `[a.b]` and `a.b = 1` also define `a` implicitly; its first mention stands in for its line, but an explicit
    # definition of the path itself always wins.
    for end in range(1, len(path)):
        lines.setdefault(path[:end], line)
    lines[path] = line


def _header_path(parts: tuple[str, ...], is_array: bool, tables_seen: dict[KeyPath, int]) -> KeyPath:
    """The full path of a header: `[[a]]` appends the element's index, and `[a.b]` after `[[a]]` is in the last a."""
    path: list[str | int] = []
    for depth, part in enumerate(parts, start=1):
        path.append(part)
        key = tuple(path)
        if is_array and depth == len(parts):
            tables_seen[key] = tables_seen.get(key, 0) + 1
            path.append(tables_seen[key] - 1)
        elif key in tables_seen:
            path.append(tables_seen[key] - 1)
    return tuple(path)


def _key_parts(raw: str) -> tuple[str, ...]:
    # Let tomllib decode the key, so quoted keys and their escapes read exactly as the parser read them.
    node: object = tomllib.loads(f"{raw.strip()} = 0")
    parts: list[str] = []
    while isinstance(node, dict):
        ((key, node),) = node.items()
        parts.append(key)
    return tuple(parts)


def _end_of_line(text: str, pos: int) -> int:
    end = text.find("\n", pos)
    return len(text) if end < 0 else end


def _find_unquoted(text: str, pos: int, target: str) -> int:
    while pos < len(text) and text[pos] != target:
        pos = _skip_string(text, pos) if text[pos] in "\"'" else pos + 1
    return pos


def _skip_value(text: str, pos: int) -> int:
    """The end of the value starting at ``pos``: the newline after it, outside any array or inline table."""
    depth = 0
    while pos < len(text):
        ch = text[pos]
        if ch in "\"'":
            pos = _skip_string(text, pos)
            continue
        if ch == "#":
            pos = _end_of_line(text, pos)
            continue
        if ch == "\n" and depth == 0:
            return pos
        if ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        pos += 1
    return pos


def _skip_string(text: str, pos: int) -> int:
    """The position just after the string literal (basic, literal, or multi-line) that starts at ``pos``."""
    quote = text[pos]
    delimiter = quote * 3 if text.startswith(quote * 3, pos) else quote
    escapes = quote == '"'
    i = pos + len(delimiter)
    while i < len(text):
        if escapes and text[i] == "\\":
            i += 2
            continue
        if text.startswith(delimiter, i):
            end = i + len(delimiter)
            # Up to two quotes just before a closing """ are content: """a""""" is the string 'a""'.
            while len(delimiter) == 3 and end < len(text) and text[end] == quote and end - i < 5:
                end += 1
            return end
        i += 1
    return i


# ---------------------------------------------------------------------------------------------------------------
# Schema

KINDS = ("str", "int", "float", "bool", "path", "str_list", "int_list", "float_list")

_EXPECTED = {
    "str": "a string",
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "path": "a path (a string)",
    "str_list": "a list of strings",
    "int_list": "a list of integers",
    "float_list": "a list of numbers",
}

_PARSE_WORD: dict[str, Callable[[str], object]] = {"str": str, "int": int, "float": float}
"""How one word of a comma-separated string becomes an element of each list kind."""


@dataclass(frozen=True)
class Field:
    """One key of a config table: its type, default and limits, and a line of help for the CLI and the hint.

    List kinds (``*_list``) also accept a single value or a comma-separated string ``"a,b"``, and always
    produce a list; ``choices`` and the minimums apply to each element. ``min_value`` is an inclusive bound
    (``>=``) and ``min_exclusive`` a strict one (``>``).
    """

    name: str
    kind: str
    required: bool = False
    default: object = None
    choices: tuple[str, ...] | None = None
    min_value: float | None = None
    min_exclusive: float | None = None
    doc: str = ""
    # A password or passphrase: error messages never quote the value.
    secret: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Field {self.name!r}: kind must be one of {', '.join(KINDS)}, not {self.kind!r}")

    @property
    def is_list(self) -> bool:
        return self.kind.endswith("_list")


class _Invalid(Exception):
    """A value does not fit its Field; validate_table adds the file, line and key."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


def validate_table(
    doc: TomlDocument, key_path: KeyPath, table: Mapping[str, object], fields: Sequence[Field]
) -> dict[str, object]:
    """Check ``table`` (found at ``key_path`` in ``doc``) against ``fields``; return normalised values.

    Absent keys get their field's default (a fresh list for list kinds). Raises ConfigError at the first
    unknown key, missing required key, value of the wrong type, value outside ``choices`` or below a minimum.
    """
    reject_unknown_keys(doc, key_path, table, [field.name for field in fields])
    values: dict[str, object] = {}
    for field in fields:
        field_path = (*key_path, field.name)
        if field.name not in table:
            if field.required:
                raise doc.error(
                    "required key is missing", field_path, line_at=key_path, hint=_field_hint(field, "add it")
                )
            # A list default is copied so that callers may change the result without changing the Field.
            default = field.default
            values[field.name] = list(default) if isinstance(default, (list, tuple)) else default
            continue
        try:
            value = _normalise(field, table[field.name])
        except _Invalid as err:
            message = f"expected {_EXPECTED[field.kind]} (the value is not shown: it is a secret)" if field.secret \
                else err.message
            raise doc.error(message, field_path, hint=err.hint or _field_hint(field)) from None
        values[field.name] = doc.resolve_path(str(value)) if field.kind == "path" and value != "" else value
    return values


def reject_unknown_keys(
    doc: TomlDocument, key_path: KeyPath, table: Mapping[str, object], known: Collection[str]
) -> None:
    """Raise ConfigError at the first key of ``table`` not in ``known``, suggesting the closest known key."""
    for key in table:
        if key not in known:
            hint = _suggest(key, known, otherwise=f"valid keys here: {', '.join(known) or 'none'}")
            raise doc.error("unknown key", (*key_path, key), hint=hint)


def _field_hint(field: Field, prefix: str = "") -> str | None:
    parts = [part for part in (prefix, field.doc) if part]
    return ": ".join(parts) or None


def _suggest(word: str, candidates: Iterable[str], *, otherwise: str) -> str:
    """A hint: "did you mean 'x'?" for the closest of ``candidates`` to ``word``, else ``otherwise``."""
    matches = difflib.get_close_matches(word, list(candidates), n=1)
    return f"did you mean {matches[0]!r}?" if matches else otherwise


def _describe(value: object) -> str:
    """``str 'abc'``: the TOML-ish type name and a short repr, for "got ..." in messages."""
    kind = "table" if isinstance(value, dict) else type(value).__name__
    return f"{kind} {reprlib.repr(value)}"


def _normalise(field: Field, value: object) -> object:
    if not field.is_list:
        return _check_element(field, _coerce(field.kind, value))
    element_kind = field.kind.removesuffix("_list")
    expected = f"expected {_EXPECTED[field.kind]}"
    items: Sequence[object]
    if isinstance(value, str):
        # A comma-separated string is how lists arrive from flags, e.g. --width 0.5,1.0.
        parse = _PARSE_WORD[element_kind]
        try:
            items = [parse(word.strip()) for word in value.split(",") if word.strip()]
        except ValueError:
            raise _Invalid(f"{expected}, got {_describe(value)}") from None
    elif isinstance(value, (list, tuple)):
        items = value
    else:
        items = [value]
    result: list[object] = []
    for number, item in enumerate(items, start=1):
        try:
            element = _coerce(element_kind, item)
        except _Invalid:
            if isinstance(value, (list, tuple)):
                raise _Invalid(f"{expected}, but item {number} is {_describe(item)}") from None
            raise _Invalid(f"{expected}, got {_describe(value)}") from None
        if element in result:
            raise _Invalid(f"lists {element!r} twice", "each value may appear once; duplicates would repeat runs")
        result.append(_check_element(field, element))
    return result


def _coerce(kind: str, value: object) -> object:
    """``value`` as the scalar ``kind``, or _Invalid. bool is an int subclass in Python but never a number here."""
    if kind in ("str", "path") and isinstance(value, str):
        return value
    if kind == "int" and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise _Invalid(f"expected a finite number, got {value}")
        return float(value)
    if kind == "bool" and isinstance(value, bool):
        return value
    raise _Invalid(f"expected {_EXPECTED[kind]}, got {_describe(value)}")


def _check_element(field: Field, value: object) -> object:
    """Apply ``choices`` and the minimums to one (already coerced) value."""
    if field.choices is not None and value not in field.choices:
        choices = ", ".join(field.choices)
        hint = _suggest(str(value), field.choices, otherwise=f"choose from {choices}")
        raise _Invalid(f"{value!r} is not one of {choices}", hint)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if field.min_value is not None and value < field.min_value:
            raise _Invalid(f"must be >= {field.min_value:g}, got {value}")
        if field.min_exclusive is not None and value <= field.min_exclusive:
            raise _Invalid(f"must be > {field.min_exclusive:g}, got {value}")
    return value


# ---------------------------------------------------------------------------------------------------------------
# Sweeps

# The variant vocabulary lives with the variant spec; the sweep schema only refers to it.
QUANTS = QUANT_MODES
WEIGHTS_KEYWORDS = ("random", "imagenet")
MODEL_SUFFIXES = (".tflite", ".onnx")

VARIANT_FIELDS: tuple[Field, ...] = (
    Field("family", "str_list", default=("mobilenet_v2",), choices=FAMILIES, doc="MobileNet families to build"),
    Field("width", "float_list", default=(1.0,), min_exclusive=0, doc="width multipliers (alpha), each > 0"),
    Field("resolution", "int_list", default=(224,), min_value=32, doc="square input sizes in pixels, each >= 32"),
    Field(
        "quant",
        "str_list",
        default=("fp32",),
        choices=QUANTS,
        doc="quantisations: fp32; fp16 weights; dynamic-int8 (int8 weights, float activations); "
        "int8 (integer ops, float input/output); int8-io (integer input/output too)",
    ),
    Field("format", "str_list", default=("tflite",), choices=FORMATS, doc="model formats to convert to"),
    Field(
        "weights",
        "str",
        default="random",
        doc='"random", "imagenet", or a path to a Keras weights file (relative to the sweep file)',
    ),
    Field("seed", "int", default=0, min_value=0, doc="seed for random weights, >= 0"),
    Field("minimalistic", "bool", default=False, doc="build the MobileNetV3 minimalistic variant"),
    Field(
        "models",
        "str_list",
        default=(),
        doc="your own .tflite/.onnx model files to benchmark too (relative to the sweep file)",
    ),
)

SWEEP_FIELDS: tuple[Field, ...] = (
    Field("name", "str", doc="sweep name shown in reports; defaults to the file name without .toml"),
)

RUNTIMES = ("auto", "litert", "tflite_runtime", "tensorflow", "onnxruntime")
ORT_OPT_LEVELS = ("disable", "basic", "extended", "all")
DELEGATES = ("cpu", "gpu", "nnapi")

RUN_FIELDS: tuple[Field, ...] = (
    Field("devices", "str_list", default=("local",),
          doc="devices to run on: names of files in device_configs/ (or paths), or ssh://[user@]host[:port]"),
    Field("runtime", "str_list", default=("auto",), choices=RUNTIMES,
          doc="runtimes: auto (litert, else tflite_runtime, else tensorflow for .tflite; onnxruntime for .onnx)"),
    Field("threads", "int_list", default=(1,), min_value=1, doc="intra-op threads, each >= 1"),
    Field("xnnpack", "str_list", default=("on",), choices=("on", "off"), doc="LiteRT XNNPACK delegate on/off"),
    Field("delegate", "str_list", default=("cpu",), choices=DELEGATES,
          doc="TFLite delegate on Android phones (benchmark_model --use_gpu / --use_nnapi): cpu, gpu, nnapi;"
              " boards and this machine run cpu only"),
    Field("ort_provider", "str", default="CPUExecutionProvider", doc="ONNX Runtime execution provider"),
    Field("ort_opt_level", "str", default="all", choices=ORT_OPT_LEVELS, doc="ONNX Runtime graph optimisation"),
    Field("warmup_runs", "int", default=5, min_value=0, doc="warm-up inferences before timing (at least)"),
    Field("warmup_min_s", "float", default=0.5, min_value=0, doc="warm-up lasts at least this many seconds"),
    Field("runs", "int", default=50, min_value=1, doc="timed inferences (at least)"),
    Field("min_s", "float", default=1.0, min_value=0, doc="timed runs last at least this many seconds"),
    Field("max_s", "float", default=60.0, min_exclusive=0, doc="timed runs stop after this many seconds"),
    Field("repeats", "int", default=3, min_value=1, doc="independent sessions (fresh process) per combination"),
    Field("affinity", "str", default="", doc="CPU list to pin the benchmark to, e.g. '0-3' (empty: no pinning)"),
    Field("order_seed", "int", default=0, min_value=0, doc="seed of the interleaved measurement order"),
    Field("timeout_s", "float", default=600.0, min_exclusive=0, doc="give up on one measurement after this"),
    Field("drift", "bool", default=True,
          doc="measure accuracy drift: each variant's outputs on the evaluation set against its fp32 twin's"),
    Field("eval_images", "int", default=64, min_value=1, doc="evaluation images for drift (built-in set, or the"
                                                             " first N of eval_dir)"),
    Field("eval_dir", "path", default="",
          doc="your evaluation images: DIR/<class>/<image> (labels: also top-1/top-5 accuracy) or DIR/<image>"),
    Field("retries", "int", default=2, min_value=0,
          doc="extra attempts for a measurement that failed for a transient reason (connection lost or refused,"
              " device offline, timeout), after reconnecting; permanent failures are never retried"),
    Field("unhealthy_after", "int", default=3, min_value=0,
          doc="mark a device unhealthy after this many measurements in a row failed transiently (retries"
              " included); its remaining measurements are reported as not run (0: never)"),
    Field("backoff_s", "float", default=1.0, min_value=0,
          doc="wait before the first retry, doubled for each further retry of the same measurement"),
    Field("backoff_max_s", "float", default=30.0, min_value=0, doc="the longest wait between two retries"),
)

# The regression check's thresholds (farmbench.results.compare documents the statistics behind them).
CHECK_FIELDS: tuple[Field, ...] = (
    Field("alpha", "float", default=0.01, min_exclusive=0,
          doc="significance level of every test (Mann-Whitney U, session agreement), between 0 and 1"),
    Field("latency_threshold_pct", "float", default=5.0, min_value=0,
          doc="a latency change counts only above this many percent of the baseline median, >= 0"),
    Field("latency_floor_us", "float", default=10.0, min_value=0,
          doc="a latency change must also exceed this many microseconds, >= 0 (for tiny models)"),
    Field("energy_threshold_pct", "float", default=10.0, min_value=0,
          doc="an energy-per-inference change counts only above this many percent, >= 0"),
    Field("energy_floor_mj", "float", default=0.01, min_value=0,
          doc="an energy change must also exceed this many millijoules per inference, >= 0"),
    Field("drift_top1_points", "float", default=1.0, min_value=0,
          doc="a change of top-1 agreement with fp32 counts above this many percentage points, >= 0"),
)

SWEEP_TABLES: dict[str, tuple[Field, ...]] = {"variants": VARIANT_FIELDS, "run": RUN_FIELDS, "check": CHECK_FIELDS}
"""The tables a sweep file may have, each described by its fields. All are optional."""


@dataclass(frozen=True)
class VariantGrid:
    """The variants to build: every combination of family, width, resolution, quant and format, plus ``models``.

    ``weights`` is "random", "imagenet", or the absolute path of a Keras weights file.
    """

    family: tuple[str, ...]
    width: tuple[float, ...]
    resolution: tuple[int, ...]
    quant: tuple[str, ...]
    format: tuple[str, ...]
    weights: str
    seed: int
    minimalistic: bool
    models: tuple[Path, ...]


@dataclass(frozen=True)
class RunConfig:
    """How to measure: the [run] table. List fields are axes of the plan (each combination is measured)."""

    devices: tuple[str, ...]
    runtime: tuple[str, ...]
    threads: tuple[int, ...]
    xnnpack: tuple[str, ...]
    ort_provider: str
    ort_opt_level: str
    warmup_runs: int
    warmup_min_s: float
    runs: int
    min_s: float
    max_s: float
    repeats: int
    affinity: str
    order_seed: int
    timeout_s: float
    drift: bool = True
    eval_images: int = 64
    eval_dir: str = ""
    delegate: tuple[str, ...] = ("cpu",)
    retries: int = 2
    unhealthy_after: int = 3
    backoff_s: float = 1.0
    backoff_max_s: float = 30.0


def _run_config(doc: TomlDocument, key_path: KeyPath, values: Mapping[str, Any]) -> RunConfig:
    if values["min_s"] > values["max_s"]:
        raise doc.error(f"min_s ({values['min_s']}) is larger than max_s ({values['max_s']})", (*key_path, "min_s"))
    if not values["devices"]:
        raise doc.error("is empty: nothing to run on", (*key_path, "devices"), hint='e.g. devices = ["local"]')
    if values["backoff_s"] > values["backoff_max_s"]:
        raise doc.error(f"backoff_s ({values['backoff_s']}) is larger than backoff_max_s ({values['backoff_max_s']})",
                        (*key_path, "backoff_s"))
    fields: dict[str, Any] = {f.name: tuple(values[f.name]) if f.is_list else values[f.name] for f in RUN_FIELDS}
    fields["eval_dir"] = str(fields["eval_dir"] or "")
    return RunConfig(**fields)


def _check_config(doc: TomlDocument, key_path: KeyPath, values: Mapping[str, Any]) -> Thresholds:
    from farmbench.results.compare import Thresholds

    if not values["alpha"] < 1:
        raise doc.error(f"must be < 1, got {values['alpha']}", (*key_path, "alpha"),
                        hint="a significance level such as 0.01 (the default) or 0.05")
    return Thresholds(**{f.name: float(values[f.name]) for f in CHECK_FIELDS})


def default_check_config() -> Thresholds:
    doc = TomlDocument.from_string("", COMMAND_LINE)
    return _check_config(doc, (), validate_table(doc, (), {}, CHECK_FIELDS))


def check_thresholds(sweep_path: str | Path | None, overrides: Mapping[str, object]) -> Thresholds:
    """The regression check's thresholds: the [check] table of the sweep file at ``sweep_path`` (defaults without
    one), with the keys given on the command line (those not None) replaced, re-validated."""
    base = load_sweep(sweep_path).check if sweep_path is not None else default_check_config()
    given = {key: value for key, value in overrides.items() if value is not None}
    if not given:
        return base
    doc = TomlDocument.from_string("", COMMAND_LINE)
    current = {f.name: getattr(base, f.name) for f in CHECK_FIELDS}
    return _check_config(doc, (), validate_table(doc, (), {**current, **given}, CHECK_FIELDS))


def default_run_config() -> RunConfig:
    doc = TomlDocument.from_string("", COMMAND_LINE)
    return _run_config(doc, (), validate_table(doc, (), {}, RUN_FIELDS))


@dataclass(frozen=True)
class Sweep:
    """A validated sweep. ``sha256`` identifies its content in results: the file's bytes when loaded unchanged
    from a file, else the canonical JSON of its values. ``path`` is the file it came from, if any."""

    name: str
    path: Path | None
    variants: VariantGrid
    sha256: str
    run: RunConfig = dataclasses.field(default_factory=lambda: default_run_config())
    check: Thresholds = dataclasses.field(default_factory=lambda: default_check_config())


def load_sweep(path: str | Path) -> Sweep:
    """Load and validate a sweep file."""
    doc = TomlDocument.load(path)
    reject_unknown_keys(doc, (), doc.data, [*(field.name for field in SWEEP_FIELDS), *SWEEP_TABLES])
    top = validate_table(doc, (), {k: v for k, v in doc.data.items() if k not in SWEEP_TABLES}, SWEEP_FIELDS)
    tables = {name: validate_table(doc, (name,), _table_at(doc, name), fields) for name, fields in SWEEP_TABLES.items()}
    name = top["name"]
    return Sweep(
        name=name if isinstance(name, str) else doc.path.stem,
        path=doc.path,
        variants=_variant_grid(doc, ("variants",), tables["variants"]),
        run=_run_config(doc, ("run",), tables["run"]),
        check=_check_config(doc, ("check",), tables["check"]),
        # The document's text is the file's bytes decoded strictly as UTF-8, so this is the hash of the file.
        sha256=hashlib.sha256(doc.text.encode("utf-8")).hexdigest(),
    )


def sweep_from_values(name: str, values: Mapping[str, object]) -> Sweep:
    """A sweep built from command-line flags: ``values`` holds [variants] keys; None means "not given".

    Validated as a file would be; errors name the flag (the key) and ``<command line>``, and relative paths are
    relative to the working directory.
    """
    doc = TomlDocument.from_string("", COMMAND_LINE)
    given = {key: value for key, value in values.items() if value is not None}
    grid = _variant_grid(doc, (), validate_table(doc, (), given, VARIANT_FIELDS))
    canonical = json.dumps(
        {"name": name, "variants": _grid_values(grid)}, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return Sweep(name=name, path=None, variants=grid, sha256=hashlib.sha256(canonical.encode("utf-8")).hexdigest())


def merge_overrides(sweep: Sweep, overrides: Mapping[str, object]) -> Sweep:
    """``sweep`` with the [variants] keys given on the command line (those not None) replaced, re-validated.

    The result keeps ``sweep.path`` to say where it came from, but its ``sha256`` is that of its values, since
    it no longer matches the file.
    """
    given = {key: value for key, value in overrides.items() if value is not None}
    if not given:
        return sweep
    merged = sweep_from_values(sweep.name, {**_grid_values(sweep.variants), **given})
    return dataclasses.replace(merged, path=sweep.path, run=sweep.run, check=sweep.check)


def merge_run_overrides(sweep: Sweep, overrides: Mapping[str, object]) -> Sweep:
    """``sweep`` with the [run] keys given on the command line (those not None) replaced, re-validated."""
    given = {key: value for key, value in overrides.items() if value is not None}
    if not given:
        return sweep
    doc = TomlDocument.from_string("", COMMAND_LINE)
    current = {f.name: list(getattr(sweep.run, f.name)) if f.is_list else getattr(sweep.run, f.name)
               for f in RUN_FIELDS}
    run = _run_config(doc, (), validate_table(doc, (), {**current, **given}, RUN_FIELDS))
    return dataclasses.replace(sweep, run=run)


def default_sweep() -> Sweep:
    """The packaged sweep ``farmbench run`` uses when given neither a file nor flags."""
    resource = importlib.resources.files("farmbench") / "sweeps" / "default.toml"
    with importlib.resources.as_file(resource) as path:
        return load_sweep(path)


def _table_at(doc: TomlDocument, name: str) -> Mapping[str, object]:
    value = doc.data.get(name, {})
    if not isinstance(value, dict):
        raise doc.error(f"expected a table, got {_describe(value)}", (name,), hint=f"write it as a [{name}] table")
    return value


def _variant_grid(doc: TomlDocument, key_path: KeyPath, values: Mapping[str, Any]) -> VariantGrid:
    """Build the grid from validated [variants] values, checking what single fields cannot: files and emptiness."""
    weights: str = values["weights"]
    if weights not in WEIGHTS_KEYWORDS:
        weights_file = doc.resolve_path(weights)
        if not weights_file.is_file():
            hint = _suggest(weights, WEIGHTS_KEYWORDS, otherwise='use "random", "imagenet", or a Keras weights file')
            raise doc.error(f"weights file not found: {weights_file}", (*key_path, "weights"), hint=hint)
        weights = str(weights_file)
    models = tuple(_model_file(doc, (*key_path, "models", i), model) for i, model in enumerate(values["models"]))
    if values["family"]:
        for axis in ("width", "resolution", "quant", "format"):
            if not values[axis]:
                raise doc.error(
                    "is empty, so no MobileNet variant would be built",
                    (*key_path, axis),
                    hint="give at least one value, or set family = [] to run only the files in models",
                )
    elif not models:
        raise doc.error("is empty and no models are given: the sweep would run nothing", (*key_path, "family"))
    return VariantGrid(
        family=tuple(values["family"]),
        width=tuple(values["width"]),
        resolution=tuple(values["resolution"]),
        quant=tuple(values["quant"]),
        format=tuple(values["format"]),
        weights=weights,
        seed=values["seed"],
        minimalistic=values["minimalistic"],
        models=models,
    )


def _model_file(doc: TomlDocument, key_path: KeyPath, value: str) -> Path:
    path = doc.resolve_path(value)
    if path.suffix not in MODEL_SUFFIXES:
        raise doc.error(
            f"{value!r} is not a .tflite or .onnx file", key_path, hint="models lists ready-made .tflite or .onnx files"
        )
    if not path.is_file():
        raise doc.error(f"model file not found: {path}", key_path, hint="paths are relative to the sweep file")
    return path


def _grid_values(grid: VariantGrid) -> dict[str, object]:
    """The grid as [variants] values again: JSON-ready, and valid input for validate_table."""
    values = dataclasses.asdict(grid)
    values["models"] = [str(path) for path in grid.models]
    return values


def sweep_from_json(document: Mapping[str, Any]) -> Sweep:
    """The sweep a run recorded (:func:`sweep_json`), validated again: what ``farmbench run --resume`` runs.
    [run] keys added since the run was recorded take their defaults."""
    variants = document.get("variants")
    run = document.get("run")
    if not isinstance(variants, Mapping) or not isinstance(run, Mapping):
        raise ConfigError("the stored sweep has no [variants] or [run] table", path=COMMAND_LINE,
                          hint="this run was recorded by an incompatible farmbench; start a new run")
    name = str(document.get("name") or "resumed")
    known = {f.name for f in RUN_FIELDS}
    sweep = sweep_from_values(name, {k: v for k, v in variants.items() if v is not None})
    doc = TomlDocument.from_string("", "<stored run>")
    run_values = {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in run.items() if k in known}
    run_config = _run_config(doc, (), validate_table(doc, (), run_values, RUN_FIELDS))
    path = document.get("path")
    return dataclasses.replace(sweep, run=run_config, path=Path(path) if path else None)


def sweep_json(sweep: Sweep) -> dict[str, Any]:
    """The sweep as JSON-ready values (what a run records): name, source file, [variants] and [run]."""
    return {"name": sweep.name, "path": str(sweep.path) if sweep.path else None,
            "variants": _grid_values(sweep.variants), "run": dataclasses.asdict(sweep.run)}
