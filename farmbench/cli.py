"""The command line: each command parses its options, calls a plain function, and prints. No logic lives here.

Every option can also come from the environment: ``FARMBENCH_<COMMAND>_<OPTION>`` (click's auto_envvar_prefix),
and the shared ones from ``FARMBENCH_CACHE_DIR``. Errors are :class:`FarmbenchError` and are caught once, in
:func:`main`, which maps them to the exit-code policy (see ``farmbench.errors``).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from farmbench import __version__
from farmbench.errors import EXIT_FAILURE, EXIT_USAGE, FarmbenchError
from farmbench.report.options import DEFAULT_HISTORY, DEFAULT_MIN_TOP1_AGREEMENT

CONTEXT = {"help_option_names": ["-h", "--help"], "auto_envvar_prefix": "FARMBENCH", "max_content_width": 110}
# Subcommands leave auto_envvar_prefix unset so click derives FARMBENCH_<COMMAND> from their parent; setting it
# again would make every option FARMBENCH_<OPTION>, whatever the command.
SUBCOMMAND_CONTEXT = {key: value for key, value in CONTEXT.items() if key != "auto_envvar_prefix"}


def _join(values: Sequence[str]) -> str | None:
    """Repeated and comma-separated list flags -> one comma-separated value for the config layer (None if unset)."""
    parts = [part.strip() for value in values for part in value.split(",") if part.strip()]
    return ",".join(parts) if parts else None


def _cache(cache_dir: Path | None) -> Any:
    from farmbench.variants.cache import ArtifactCache

    return ArtifactCache(cache_dir)


cache_dir_option = click.option(
    "--cache-dir", type=click.Path(path_type=Path, file_okay=False), envvar="FARMBENCH_CACHE_DIR",
    help="Artifact cache [env FARMBENCH_CACHE_DIR; default $XDG_CACHE_HOME/farmbench or ~/.cache/farmbench].",
)


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, "-V", "--version", prog_name="farmbench")
def cli() -> None:
    """Build MobileNet variants and benchmark them on phones, edge boards and this machine.

    Start with `farmbench build --plan` to see what the default sweep contains, then `farmbench build`.
    """


def _variant_options(func: Any) -> Any:
    """The variant-grid flags shared by `build` (and later `run`). Lists: repeat the flag or separate by commas."""
    options = [
        click.option("--sweep", "sweep_path", type=click.Path(path_type=Path, dir_okay=False),
                     help="Sweep TOML file; flags below override its [variants] keys."),
        click.option("--family", multiple=True, metavar="NAME[,NAME]",
                     help="mobilenet_v1, mobilenet_v2, mobilenet_v3_small, mobilenet_v3_large."),
        click.option("--width", multiple=True, metavar="ALPHA[,ALPHA]", help="Width multipliers, each > 0."),
        click.option("--resolution", multiple=True, metavar="PX[,PX]", help="Input sizes in pixels, each >= 32."),
        click.option("--quant", multiple=True, metavar="MODE[,MODE]",
                     help="fp32, fp16, dynamic-int8, int8, int8-io."),
        click.option("--format", "formats", multiple=True, metavar="FMT[,FMT]", help="tflite, onnx."),
        click.option("--weights", default=None, metavar="random|imagenet|FILE",
                     help="Weights: seeded random (trained briefly on a synthetic task), Keras ImageNet, or a file."),
        click.option("--seed", type=int, default=None, help="Seed for random weights."),
        click.option("--minimalistic/--no-minimalistic", default=None, help="MobileNetV3 minimalistic variant."),
        click.option("--model", "models", multiple=True, type=click.Path(path_type=Path, dir_okay=False),
                     help="Your own .tflite/.onnx file to include (repeatable)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _sweep_from_options(sweep_path: Path | None, family: Sequence[str], width: Sequence[str],
                        resolution: Sequence[str], quant: Sequence[str], formats: Sequence[str],
                        weights: str | None, seed: int | None, minimalistic: bool | None,
                        models: Sequence[Path]) -> Any:
    from farmbench import config

    overrides: dict[str, object] = {
        "family": _join(family), "width": _join(width), "resolution": _join(resolution), "quant": _join(quant),
        "format": _join(formats), "weights": weights, "seed": seed, "minimalistic": minimalistic,
        "models": [str(m) for m in models] or None,
    }
    if sweep_path is not None:
        return config.merge_overrides(config.load_sweep(sweep_path), overrides)
    if all(value is None for value in overrides.values()):
        return config.default_sweep()
    grid_flags = ("family", "width", "resolution", "quant", "format", "weights", "seed", "minimalistic")
    if overrides["models"] and all(overrides[key] is None for key in grid_flags):
        # Only --model given: benchmark just those files, not the default grid as well.
        overrides["family"] = []
    return config.sweep_from_values("command-line", overrides)


class _Progress:
    """Plain progress lines on stderr, one per artifact as it finishes (readable in CI logs and terminals)."""

    def __init__(self, total: int, quiet: bool) -> None:
        self.total = total
        self.done = 0
        self.quiet = quiet
        self.started = time.monotonic()

    def __call__(self, event: dict[str, Any]) -> None:
        if self.quiet:
            return
        kind = event.get("event")
        elapsed = time.monotonic() - self.started
        if kind == "group-start":
            click.echo(f"[{elapsed:6.1f}s] building {event['name']} ({event['artifacts']} artifacts,"
                       f" ~{event['estimated_memory_mb'] / 1024:.1f} GB)", err=True)
        elif kind == "model":
            click.echo(f"[{elapsed:6.1f}s]   model {event['name']} ready ({event['weights']},"
                       f" {event['seconds']:.1f} s)", err=True)
        elif kind == "done":
            self.done += 1
            status = event["status"]
            if status == "cached":
                return
            line = f"[{elapsed:6.1f}s]   {self.done}/{self.total} {status:<6} {event['name']} ({event['seconds']:.1f} s)"
            if event.get("error"):
                line += f"\n             {event['error']}"
            click.echo(line, err=True)


@cli.command(context_settings=SUBCOMMAND_CONTEXT)
@_variant_options
@click.option("--out", type=click.Path(path_type=Path, file_okay=False),
              help="Also copy artifacts and manifests here under readable names.")
@click.option("--jobs", "-j", type=click.IntRange(min=0), default=0, show_default=True,
              help="Parallel build workers (0 = number of cores); memory limits them further.")
@click.option("--max-memory-gb", type=click.FloatRange(min=0.5), default=None,
              help="Memory the build workers may use together [default: 85% of available].")
@click.option("--force", is_flag=True, help="Rebuild even what the cache holds.")
@click.option("--plan", is_flag=True, help="List the variants and their ImageNet weights status; build nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
@click.option("--quiet", "-q", is_flag=True, help="No progress lines on stderr.")
@cache_dir_option
def build(sweep_path: Path | None, family: tuple[str, ...], width: tuple[str, ...], resolution: tuple[str, ...],
          quant: tuple[str, ...], formats: tuple[str, ...], weights: str | None, seed: int | None,
          minimalistic: bool | None, models: tuple[Path, ...], out: Path | None, jobs: int,
          max_memory_gb: float | None, force: bool, plan: bool, as_json: bool, quiet: bool,
          cache_dir: Path | None) -> None:
    """Build MobileNet variants (TFLite and ONNX) into the cache, or take them from it.

    Without --sweep or flags, builds the default sweep (the one `farmbench run` uses).

    \b
    Examples:
      farmbench build --family mobilenet_v2 --width 0.35,0.5 --resolution 96 --quant fp32,int8
      farmbench build --sweep my_sweep.toml --out ./models
      farmbench build --plan --weights imagenet --family mobilenet_v1 --width 0.25,0.3
    """
    from farmbench.variants.build import BuildOptions
    from farmbench.variants.plan import build_sweep, copy_out, plan_rows, variants_of

    sweep = _sweep_from_options(sweep_path, family, width, resolution, quant, formats, weights, seed,
                                minimalistic, models)
    if plan:
        rows = plan_rows(sweep)
        if as_json:
            click.echo(json.dumps([row.__dict__ for row in rows], indent=2))
        else:
            from farmbench.ui import table

            click.echo(table(["variant", "imagenet weights"], [(r.name, r.imagenet) for r in rows]))
            click.echo(f"\n{len(rows)} variants in sweep {sweep.name!r}")
        return
    total = len(variants_of(sweep)) + len(sweep.variants.models)
    options = BuildOptions(cache=_cache(cache_dir), jobs=jobs, force=force,
                           memory_budget_mb=int(max_memory_gb * 1024) if max_memory_gb else None,
                           on_event=_Progress(total, quiet or as_json))
    started = time.monotonic()
    results = build_sweep(sweep, options)
    wall_s = time.monotonic() - started
    if out is not None:
        copy_out(results, out)
    failed = [r for r in results if not r.ok]
    if as_json:
        click.echo(json.dumps({
            "sweep": sweep.name, "wall_seconds": round(wall_s, 3),
            "artifacts": [{"name": r.name, "key": r.key, "status": r.status, "seconds": round(r.seconds, 3),
                           "path": str(r.entry.model_path) if r.entry else None, "error": r.error}
                          for r in results],
        }, indent=2))
    else:
        _print_build_table(results)
        built = sum(r.status == "built" for r in results)
        cached = sum(r.status == "cached" for r in results)
        click.echo(f"\n{built} built, {cached} from cache, {len(failed)} failed in {wall_s:.1f} s"
                   f" (cache: {options.cache.root})" + (f"; copied to {out}" if out else ""))
    if failed:
        for r in failed:
            click.echo(f"error: {r.name}: {r.error}", err=True)
        sys.exit(EXIT_FAILURE)


def _print_build_table(results: Sequence[Any]) -> None:
    from farmbench.ui import human_bytes, table

    rows = []
    for r in results:
        m = r.entry.manifest if r.entry else {}
        inputs = m.get("inputs") or [{}]
        agreement = (m.get("verification") or {}).get("top1_agreement_vs_keras")
        rows.append((
            r.name, r.status,
            human_bytes(m["size_bytes"]) if m else "",
            f"{m['param_count'] / 1e6:.2f}" if m else "",
            f"{m['macs'] / 1e6:.1f}" if m else "",
            inputs[0].get("dtype", ""),
            "" if agreement is None else f"{agreement:.2f}",
            f"{r.seconds:.1f}" if r.status == "built" else "",
            r.key[:12],
        ))
    click.echo(table(["artifact", "status", "size", "params M", "MMACs", "input", "top1=keras", "build s", "key"],
                     rows, right=(2, 3, 4, 6, 7)))


db_option = click.option(
    "--db", "db_path", type=click.Path(path_type=Path, dir_okay=False), envvar="FARMBENCH_DB",
    help="Results database [env FARMBENCH_DB; default $XDG_DATA_HOME/farmbench/results.db].",
)


def _run_options(func: Any) -> Any:
    """The [run] keys of a sweep file as flags; given flags override the file's values."""
    options = [
        click.option("--device", "-d", "devices", multiple=True, metavar="NAME|URL",
                     help="Device: local, a name from device_configs/, a .toml path, or ssh://[user@]host[:port]."),
        click.option("--runtime", "runtimes", multiple=True, metavar="NAME[,NAME]",
                     help="auto, litert, tflite_runtime, tensorflow, onnxruntime."),
        click.option("--threads", multiple=True, metavar="N[,N]", help="Intra-op threads (an axis)."),
        click.option("--xnnpack", multiple=True, metavar="on|off", help="LiteRT XNNPACK delegate (an axis)."),
        click.option("--delegate", "delegates", multiple=True, metavar="cpu|gpu|nnapi",
                     help="TFLite delegate on Android phones (an axis; boards run cpu)."),
        click.option("--runs", type=int, default=None, help="Timed inferences (at least)."),
        click.option("--min-s", type=float, default=None, help="Timed runs last at least this long."),
        click.option("--max-s", type=float, default=None, help="Timed runs stop after this long."),
        click.option("--warmup-runs", type=int, default=None, help="Warm-up inferences (at least)."),
        click.option("--warmup-min-s", type=float, default=None, help="Warm-up lasts at least this long."),
        click.option("--repeats", type=int, default=None, help="Independent sessions per combination."),
        click.option("--affinity", default=None, help="CPU list to pin the benchmark to, e.g. 0-3."),
        click.option("--order-seed", type=int, default=None, help="Seed of the interleaved order."),
        click.option("--timeout-s", type=float, default=None, help="Give up on one measurement after this."),
        click.option("--drift/--no-drift", default=None,
                     help="Measure accuracy drift against each variant's fp32 twin [default: on]."),
        click.option("--eval-images", type=int, default=None, help="Evaluation images for drift [default: 64]."),
        click.option("--eval-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                     help="Your evaluation images: DIR/<class>/<image> (adds top-1/top-5 accuracy) or DIR/<image>."),
        click.option("--retries", type=int, default=None,
                     help="Extra attempts after a transient failure (connection lost, timeout) [default: 2]."),
        click.option("--unhealthy-after", type=int, default=None,
                     help="Consecutive failed measurements before a device is given up (0: never) [default: 3]."),
        click.option("--backoff-s", type=float, default=None,
                     help="Wait before the first retry; doubles for each further one [default: 1]."),
        click.option("--backoff-max-s", type=float, default=None, help="Longest wait between retries [default: 30]."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@cli.command(context_settings=SUBCOMMAND_CONTEXT)
@_variant_options
@_run_options
@db_option
@click.option("--accept-new-host-key", is_flag=True,
              help="On first contact with an SSH board, record its host key (a changed key is always refused).")
@click.option("--resume", "resume_id", metavar="RUN",
              help="Finish run RUN: measure what it has not finished, with its stored sweep and settings.")
@click.option("--jobs", "-j", type=click.IntRange(min=0), default=0, help="Parallel build workers.")
@click.option("--max-memory-gb", type=click.FloatRange(min=0.5), default=None,
              help="Memory the build workers may use together [default: 85% of available].")
@click.option("--json", "as_json", is_flag=True, help="Print the run summary as JSON on stdout.")
@click.option("--report/--no-report", "report", default=True,
              help="Write the HTML report after the run (./reports/<run-id>.html, as `farmbench report`)"
                   " [default: on].")
@click.option("--progress", type=click.Choice(["auto", "live", "plain"]), default="auto", show_default=True,
              help="live: per-device lines and an overall bar with ETA (a terminal); plain: log lines (CI); auto"
                   " picks live on a terminal outside CI.")
@click.option("--quiet", "-q", is_flag=True, help="No progress on stderr.")
@cache_dir_option
def run(sweep_path: Path | None, family: tuple[str, ...], width: tuple[str, ...], resolution: tuple[str, ...],
        quant: tuple[str, ...], formats: tuple[str, ...], weights: str | None, seed: int | None,
        minimalistic: bool | None, models: tuple[Path, ...], devices: tuple[str, ...], runtimes: tuple[str, ...],
        threads: tuple[str, ...], xnnpack: tuple[str, ...], delegates: tuple[str, ...], runs: int | None,
        min_s: float | None, max_s: float | None, warmup_runs: int | None, warmup_min_s: float | None,
        repeats: int | None, affinity: str | None, order_seed: int | None, timeout_s: float | None, drift: bool | None,
        eval_images: int | None, eval_dir: Path | None, retries: int | None, unhealthy_after: int | None,
        backoff_s: float | None, backoff_max_s: float | None, db_path: Path | None, accept_new_host_key: bool,
        resume_id: str | None, jobs: int, max_memory_gb: float | None, as_json: bool, report: bool,
        progress: str, quiet: bool,
        cache_dir: Path | None) -> None:
    """Build what is missing, then measure every variant on every device and store the results.

    Without --sweep or flags, runs the default sweep on this machine. Devices run in parallel, one measurement at a
    time each; transient failures are retried after reconnecting; Ctrl-C stops cleanly (exit 130) and
    `--resume RUN` finishes what a stopped or killed run left.

    \b
    Examples:
      farmbench run
      farmbench run --family mobilenet_v2 --width 0.35 --resolution 96 --quant fp32,int8 --device local
      farmbench run --sweep nightly.toml --device rpi5 --device ssh://pi@10.0.0.7 --threads 1,4
      farmbench run --resume r20261121-023000-ab12
    """
    from farmbench import config
    from farmbench.devices.config import resolve_device
    from farmbench.errors import UsageError
    from farmbench.orchestrator import run_sweep, stored_sweep
    from farmbench.progress import run_progress
    from farmbench.results.store import ResultStore
    from farmbench.variants.build import BuildOptions
    from farmbench.variants.plan import build_references, build_sweep, variants_of

    run_overrides: dict[str, object] = {
        "devices": _join(devices), "runtime": _join(runtimes), "threads": _join(threads),
        "xnnpack": _join(xnnpack), "delegate": _join(delegates), "runs": runs, "min_s": min_s, "max_s": max_s,
        "warmup_runs": warmup_runs, "warmup_min_s": warmup_min_s, "repeats": repeats, "affinity": affinity,
        "order_seed": order_seed, "timeout_s": timeout_s, "drift": drift, "eval_images": eval_images,
        "eval_dir": None if eval_dir is None else str(eval_dir.resolve()), "retries": retries,
        "unhealthy_after": unhealthy_after, "backoff_s": backoff_s, "backoff_max_s": backoff_max_s,
    }
    if resume_id is not None:
        variant_values = {"sweep": sweep_path, "family": family, "width": width, "resolution": resolution,
                          "quant": quant, "format": formats, "weights": weights, "seed": seed,
                          "minimalistic": minimalistic, "model": models}
        given = [f"--{name.replace('_', '-')}" for name, value in {**variant_values, **run_overrides}.items()
                 if value not in (None, ())]
        if given:
            raise UsageError(f"--resume {resume_id} runs the stored plan with the settings it was started with;"
                             f" {', '.join(given)} would change them",
                             hint="drop those options, or start a new run with them")
        with ResultStore(db_path, create=False) as store:
            sweep = stored_sweep(store, resume_id)
    else:
        sweep = _sweep_from_options(sweep_path, family, width, resolution, quant, formats, weights, seed,
                                    minimalistic, models)
        sweep = config.merge_run_overrides(sweep, run_overrides)
    device_configs = [resolve_device(ref) for ref in sweep.run.devices]  # config errors before any work
    build_progress = _Progress(len(variants_of(sweep)) + len(sweep.variants.models), quiet or as_json)
    options = BuildOptions(cache=_cache(cache_dir), jobs=jobs, on_event=build_progress,
                           memory_budget_mb=int(max_memory_gb * 1024) if max_memory_gb else None)
    results = build_sweep(sweep, options)
    references = build_references(results, options) if sweep.run.drift else {}
    with ResultStore(db_path) as store:
        with run_progress("none" if quiet or as_json else progress) as on_event:
            summary = run_sweep(sweep, results, device_configs, store, command=sys.argv, on_event=on_event,
                                accept_new_host_key=accept_new_host_key, references=references,
                                cache_dir=options.cache.root, resume=resume_id)
        # An aborted run (a second Ctrl-C) leaves at once; an interrupted one still gets its report.
        report_path, report_error = (_run_report(store, summary.run_id) if report and not summary.aborted
                                     else (None, None))
        exit_code = summary.exit_code
        if report_error and exit_code == 0:
            exit_code = EXIT_FAILURE
        if as_json:
            click.echo(json.dumps({**summary.to_json(), "exit_code": exit_code, "db": str(store.path),
                                   "report": None if report_path is None else str(report_path),
                                   "report_error": report_error}, indent=2, default=str))
        else:
            if not summary.aborted:
                _print_results(store, [summary.run_id])
            _print_run_summary(summary, store.path)
            if report_path is not None:
                click.echo(f"report: {report_path}")
        if report_error:
            click.echo(f"error: report not written: {report_error}", err=True)
    _exit(exit_code, hard=summary.aborted)

def _run_report(store: Any, run_id: str) -> tuple[Path | None, str | None]:
    """The report after a run: its path, or why it could not be written. The run is stored by now, so a failure
    here (even a bug) is reported and the command exits 1 instead of losing the run summary to a traceback."""
    from farmbench.report import write_report

    try:
        return write_report(store, anchor=run_id), None
    except FarmbenchError as exc:
        return None, f"{exc.format()}\n  hint: farmbench report --run {run_id}"
    except Exception as exc:  # noqa: BLE001 - see the docstring
        return None, f"{type(exc).__name__}: {exc}\n  hint: farmbench report --run {run_id}; please report this bug"


def _print_run_summary(summary: Any, db: Path) -> None:
    """The closing lines of `farmbench run`: counts, devices that were not healthy, what failed or was not run."""
    counts = f"{summary.ok} ok, {summary.failed} failed, {summary.skipped} skipped of {summary.planned} planned"
    not_run = f", {summary.not_run} not run" if summary.not_run else ""
    retried = f"; {summary.retried} failed attempts retried" if summary.retried else ""
    resumed = f" (resumed: {summary.already_done} were done before)" if summary.resumed else ""
    status = "" if summary.status == "finished" else f" ({summary.status})"
    click.echo(f"\nrun {summary.run_id}{status}: {counts}{not_run}{retried}{resumed} in {summary.wall_s:.1f} s"
               f" (results: {db})")
    for name, report in summary.devices.items():
        if report.health != "healthy":
            click.echo(f"device {name}: {report.health}: {report.reason or ''}".rstrip(": "), err=True)
    for device, artifact, message in summary.failures:
        click.echo(f"failed: {artifact} on {device}: {message}", err=True)
    by_reason: dict[tuple[str, str], int] = {}
    for item in summary.not_run_items:
        key = (item["device"], item["reason"])
        by_reason[key] = by_reason.get(key, 0) + 1
    for (device, reason), count in by_reason.items():
        click.echo(f"not run: {count} on {device}: {reason}", err=True)
    for name, message in summary.build_failures:
        click.echo(f"not built: {name}: {message}", err=True)
    for line in summary.not_planned:
        click.echo(f"not planned: {line}", err=True)
    if summary.status == "interrupted":
        click.echo(f"interrupted ({summary.signal}): `farmbench run --resume {summary.run_id}` runs the rest",
                   err=True)


def _exit(code: int, *, hard: bool = False) -> None:
    """Exit with ``code``. ``hard``: a second Ctrl-C stopped waiting for devices still busy; their worker threads
    must not hold the exit up (os._exit skips waiting for them, after flushing what was printed)."""
    if hard:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def _print_results(store: Any, run_ids: Sequence[str] | None) -> None:
    import pandas as pd

    from farmbench.ui import table

    frame = store.frame(run_ids)
    if frame.empty:
        click.echo("no measurements")
        return
    # Plan order is shuffled on purpose; people read results grouped.
    frame = frame.sort_values(["device", "artifact", "runtime", "threads", "repeat"], kind="stable")
    rows = []
    for r in frame.itertuples():
        def ms(value: Any) -> str:
            return "" if value is None or value != value else f"{value / 1000:.3f}"

        ci = "" if r.ci95_low_us != r.ci95_low_us or r.ci95_low_us is None else \
            f"{r.ci95_low_us / 1000:.3f}-{r.ci95_high_us / 1000:.3f}"
        version = "" if r.runtime_version is None or pd.isna(r.runtime_version) else r.runtime_version
        runtime = " ".join(part for part in (r.runtime, version, "" if r.delegate == "cpu" else r.delegate,
                                             "no-xnnpack" if r.xnnpack == "off" else "") if part)
        rows.append((r.device, r.artifact, runtime, r.threads, r.status,
                     ms(r.p50_us), ms(r.p90_us), ms(r.p99_us), ci,
                     "" if r.init_ms != r.init_ms or r.init_ms is None else f"{r.init_ms:.1f}",
                     "" if r.peak_rss_mb != r.peak_rss_mb or r.peak_rss_mb is None else f"{r.peak_rss_mb:.0f}",
                     _number(r.avg_power_mw, "{:.0f}"), _number(r.energy_per_inference_mj, "{:.3f}"),
                     _temperatures(r.max_temp_before_c, r.max_temp_after_c), _number(r.top1_agreement, "{:.0%}"),
                     _number(r.kl_mean, "{:.4f}"), r.flags or (r.error_class or "")))
    click.echo(table(["device", "artifact", "runtime", "thr", "status", "p50 ms", "p90 ms", "p99 ms",
                      "p50 95% CI", "init ms", "RSS MB", "mW", "mJ/inf", "temp C", "top1 agr", "KL",
                      "flags / error"], rows, right=(3, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15)))
    _print_execution_drift(store, run_ids)


def _print_execution_drift(store: Any, run_ids: Sequence[str] | None) -> None:
    """The same variant's outputs across devices, runtimes and delegates (when more than one ran it)."""
    from farmbench.results.crossdrift import compare_executions
    from farmbench.ui import table

    pairs = compare_executions(store, run_ids)
    if not pairs:
        return
    click.echo("\noutputs of the same variant across devices and delegates (against the first column):")
    click.echo(table(["artifact", "reference", "compared", "n", "top1 agr", "top5", "KL", "cos min", "max abs err"],
                     [(p.artifact, p.reference.label, p.other.label, p.metrics.n,
                       f"{p.metrics.top1_agreement:.0%}", f"{p.metrics.top5_overlap:.0%}",
                       f"{p.metrics.kl_mean:.2g}", f"{p.metrics.cosine_min:.4f}", f"{p.metrics.max_abs_error:.2g}")
                      for p in pairs], right=(3, 4, 5, 6, 7, 8)))


def _temperatures(before_c: Any, after_c: Any) -> str:
    """The hottest watched zone before and after the run, e.g. ``41>47``; blank when neither is known."""
    before, after = _number(before_c, "{:.0f}"), _number(after_c, "{:.0f}")
    return f"{before or '?'}>{after or '?'}" if before or after else ""


def _number(value: Any, pattern: str) -> str:
    """A frame value for a table cell: blank when missing (None, NaN or pandas NA)."""
    import pandas as pd

    return "" if value is None or pd.isna(value) else pattern.format(value)


@cli.command(context_settings=SUBCOMMAND_CONTEXT)
@click.option("--run", "run_ids", multiple=True, help="Run id (repeatable; default: the latest run).")
@click.option("--all-runs", is_flag=True, help="Every run in the database.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@db_option
def results(run_ids: tuple[str, ...], all_runs: bool, fmt: str, db_path: Path | None) -> None:
    """Show stored measurements (default: the latest run) or, with --format json, the runs and their ids."""
    from farmbench.errors import UsageError
    from farmbench.results.store import ResultStore

    with ResultStore(db_path, create=False) as store:
        runs_info = store.runs()
        if not runs_info:
            raise UsageError(f"no runs in {store.path}", hint="run `farmbench run` first")
        selected = None if all_runs else (list(run_ids) or [runs_info[-1].id])
        if fmt == "json":
            chosen = [r for r in runs_info if selected is None or r.id in selected]
            from farmbench.results.crossdrift import compare_executions

            click.echo(json.dumps({"runs": [r.to_json() for r in chosen],
                                   "measurements": json.loads(store.frame(selected).to_json(orient="records")),
                                   "execution_drift": [p.to_json() for p in compare_executions(store, selected)]},
                                  indent=2, default=str))
            return
        for info in runs_info:
            if selected is None or info.id in selected:
                click.echo(f"run {info.id}  {info.status}  sweep {info.sweep_name}  started {info.started_at}")
        _print_results(store, selected)


@cli.command(context_settings=SUBCOMMAND_CONTEXT)
@click.option("--format", "fmt", type=click.Choice(["csv", "parquet", "json"]), required=True)
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), required=True)
@click.option("--run", "run_ids", multiple=True, help="Run id (repeatable; default: every run).")
@db_option
def export(fmt: str, out: Path, run_ids: tuple[str, ...], db_path: Path | None) -> None:
    """Export measurements (one row each, with statistics and context) as CSV, Parquet or JSON."""
    from farmbench.results.store import ResultStore

    with ResultStore(db_path, create=False) as store:
        path = store.export(out, fmt, list(run_ids) or None)
    click.echo(f"wrote {path}")


@cli.command(context_settings=SUBCOMMAND_CONTEXT)
@click.option("--run", "run_ids", multiple=True, metavar="ID",
              help="Report on these runs (repeatable); the newest is the one described, all of them make the trends.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="An .html file, or a directory for <run-id>.html [default: ./reports/<run-id>.html].")
@click.option("--history", type=click.IntRange(min=1), default=DEFAULT_HISTORY, show_default=True,
              help="Without --run: how many runs of the latest run's sweep to include, for the trends.")
@click.option("--min-top1-agreement", type=click.FloatRange(0.0, 1.0), default=DEFAULT_MIN_TOP1_AGREEMENT,
              show_default=True, help="Drift budget of 'which variant to ship': top-1 agreement with fp32, 0..1.")
@click.option("--self-contained", is_flag=True,
              help="Inline plotly.js (4.8 MB) in the page instead of writing plotly-<version>.min.js beside it.")
@db_option
def report(run_ids: tuple[str, ...], out: Path | None, history: int, min_top1_agreement: float,
           self_contained: bool, db_path: Path | None) -> None:
    """Write an HTML report of stored results that opens offline in any browser.

    Which variant to ship on each device (the fastest within the drift budget), then per device: a sortable table
    (p50/p90/p99 with CI, init, peak memory, energy, drift, trust flags), latency distributions, width x resolution
    heatmaps, latency vs drift and vs energy, speed-up over fp32; devices side by side; trends across runs; run
    context. `farmbench run` writes it too, unless --no-report.

    \b
    Runs: without --run, the latest run plus up to --history - 1 earlier runs of
    the same sweep (same sweep file contents and flags) for the trends; with --run,
    exactly those runs. The newest selected run is the one the report describes.
    Output: ./reports/<run-id>.html under the current directory, with
    plotly-<version>.min.js beside it (shared by every report in the folder).

    \b
    Examples:
      farmbench report
      farmbench report --run r20261121-023000-ab12 --out nightly.html --self-contained
    """
    from farmbench.report import ReportOptions, write_report
    from farmbench.results.store import ResultStore

    options = ReportOptions(history=history, min_top1_agreement=min_top1_agreement, self_contained=self_contained)
    with ResultStore(db_path, create=False) as store:
        path = write_report(store, list(run_ids), out, options=options)
    click.echo(f"wrote {path}")


@cli.command(context_settings=SUBCOMMAND_CONTEXT)
@click.option("--baseline", "baseline_ref", default="previous", show_default=True, metavar="RUN|NAME|previous",
              help="A run id, a baseline name (`farmbench baseline list`), or the previous finished run of the"
                   " candidate's sweep on the same devices.")
@click.option("--candidate", "candidate_ref", default="latest", show_default=True, metavar="RUN|latest",
              help="The run to check: a run id, or the latest run.")
@click.option("--sweep", "sweep_path", type=click.Path(path_type=Path, dir_okay=False),
              help="Sweep file whose [check] table sets the thresholds (flags below override it).")
@click.option("--alpha", type=float, default=None, help="Significance level of the tests [default: 0.01].")
@click.option("--latency-threshold-pct", type=float, default=None, help="Latency change that counts [default: 5].")
@click.option("--latency-floor-us", type=float, default=None, help="... and at least this many µs [default: 10].")
@click.option("--energy-threshold-pct", type=float, default=None, help="Energy change that counts [default: 10].")
@click.option("--energy-floor-mj", type=float, default=None, help="... and at least this many mJ [default: 0.01].")
@click.option("--drift-top1-points", type=float, default=None,
              help="Top-1 agreement change that counts, in points [default: 1].")
@click.option("--markdown", "markdown_path", type=click.Path(path_type=Path, dir_okay=False),
              help="Also write a markdown summary here (for a CI comment).")
@click.option("--junit", "junit_path", type=click.Path(path_type=Path, dir_okay=False),
              help="Also write JUnit XML here: one testcase per matched measurement.")
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON on stdout.")
@db_option
def check(baseline_ref: str, candidate_ref: str, sweep_path: Path | None, alpha: float | None,
          latency_threshold_pct: float | None, latency_floor_us: float | None, energy_threshold_pct: float | None,
          energy_floor_mj: float | None, drift_top1_points: float | None, markdown_path: Path | None,
          junit_path: Path | None, as_json: bool, db_path: Path | None) -> None:
    """Compare a run with a baseline and fail on regressions (exit 3; 0 when clean, 1 a device failed, 2 usage).

    Matches measurements by device, variant and runtime configuration. Latency regresses when Mann-Whitney U on the
    raw samples gives p < alpha, the median moved more than the threshold and the floor, and the session medians
    show a change beyond the threshold (a t-test against it, p < alpha); energy per inference and top-1 agreement
    with fp32 have their own thresholds.
    Measurements whose context differs (runtime version, OS build, threads, delegate...) are refused, naming the
    field. Improvements are reported too.

    \b
    Examples:
      farmbench check                                   # latest run against the previous run of its sweep
      farmbench check --baseline nightly --junit reports/check.xml --markdown reports/check.md
      farmbench check --baseline r20261120-020000-ab12 --candidate r20261121-020000-cd34 --sweep nightly.toml
    """
    from farmbench import config
    from farmbench.results.check_output import format_table, junit_xml, markdown_summary
    from farmbench.results.compare import compare_runs, resolve_baseline, resolve_candidate
    from farmbench.results.store import ResultStore

    thresholds = config.check_thresholds(sweep_path, {
        "alpha": alpha, "latency_threshold_pct": latency_threshold_pct, "latency_floor_us": latency_floor_us,
        "energy_threshold_pct": energy_threshold_pct, "energy_floor_mj": energy_floor_mj,
        "drift_top1_points": drift_top1_points})
    with ResultStore(db_path, create=False) as store:
        candidate = resolve_candidate(store, candidate_ref)
        baseline, how = resolve_baseline(store, baseline_ref, candidate)
        if baseline.id == candidate.id:
            from farmbench.errors import UsageError

            raise UsageError(f"baseline and candidate are the same run ({candidate.id}, {how})",
                             hint="name another baseline, or check a newer run")
        comparison = compare_runs(store, baseline.id, candidate.id, thresholds, baseline_ref=how)
    for path, text in ((markdown_path, markdown_summary), (junit_path, junit_xml)):
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text(comparison), encoding="utf-8")
    if as_json:
        click.echo(json.dumps(comparison.to_json(), indent=2))
    else:
        click.echo(format_table(comparison))
    sys.exit(comparison.exit_code)


@cli.group(context_settings=SUBCOMMAND_CONTEXT)
def baseline() -> None:
    """Name runs as baselines for `farmbench check --baseline NAME`."""


@baseline.command("set", context_settings=SUBCOMMAND_CONTEXT)
@click.argument("name")
@click.argument("run_ref", metavar="RUN")
@db_option
def baseline_set(name: str, run_ref: str, db_path: Path | None) -> None:
    """Point baseline NAME at RUN (a run id or `latest`); an existing NAME moves. Example: baseline set nightly latest"""
    from farmbench.results.compare import check_baseline_name, resolve_candidate
    from farmbench.results.store import ResultStore

    check_baseline_name(name)
    with ResultStore(db_path, create=False) as store:
        run_info = resolve_candidate(store, run_ref)
        before = store.set_baseline(name, run_info.id)
    if before is None:
        click.echo(f"baseline {name!r} set to run {run_info.id} (sweep {run_info.sweep_name}, {run_info.started_at})")
    elif before == run_info.id:
        click.echo(f"baseline {name!r} already at run {run_info.id}")
    else:
        click.echo(f"baseline {name!r} moved from run {before} to run {run_info.id}")


@baseline.command("list", context_settings=SUBCOMMAND_CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
@db_option
def baseline_list(as_json: bool, db_path: Path | None) -> None:
    """List named baselines and the runs they point at."""
    from farmbench.results.store import ResultStore
    from farmbench.ui import table

    with ResultStore(db_path, create=False) as store:
        named = store.baselines()
        runs_by_id = {r.id: r for r in store.runs()}
    if as_json:
        click.echo(json.dumps([b.to_json() for b in named], indent=2))
        return
    if not named:
        click.echo("no baselines (set one: farmbench baseline set NAME RUN)")
        return
    click.echo(table(["baseline", "run", "sweep", "run started", "status", "set at"],
                     [(b.name, b.run_id, runs_by_id[b.run_id].sweep_name, runs_by_id[b.run_id].started_at,
                       runs_by_id[b.run_id].status, b.set_at) for b in named]))


@baseline.command("delete", context_settings=SUBCOMMAND_CONTEXT)
@click.argument("name")
@db_option
def baseline_delete(name: str, db_path: Path | None) -> None:
    """Forget baseline NAME (its run stays in the database)."""
    from farmbench.errors import UsageError
    from farmbench.results.store import ResultStore

    with ResultStore(db_path, create=False) as store:
        if not store.delete_baseline(name):
            raise UsageError(f"no baseline named {name!r} in {store.path}", hint="`farmbench baseline list` shows them")
    click.echo(f"baseline {name!r} deleted")


@cli.command(context_settings=SUBCOMMAND_CONTEXT)
@click.option("--probe", is_flag=True, help="Connect to each device and describe it (OS, CPU, runtimes, telemetry).")
@click.option("--check/--no-check", default=True, show_default=True,
              help="Check each device's health (online, offline, unauthorized, busy; battery, temperature), all in "
                   "parallel; --no-check only lists the device files.")
@click.option("--device", "-d", "refs", multiple=True, help="Only these devices (names or URLs).")
@click.option("--timeout-s", type=click.FloatRange(min=0, min_open=True), default=30.0, show_default=True,
              help="Give up on the health checks after this long (each device also has its connect_timeout_s).")
@click.option("--accept-new-host-key", is_flag=True, help="Record unknown SSH host keys on first contact.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
def devices(probe: bool, check: bool, refs: tuple[str, ...], timeout_s: float, accept_new_host_key: bool,
            as_json: bool) -> None:
    """Check the configured devices: status, battery and hottest thermal zone. Exit 1 unless all are online.

    \b
    Statuses: online; offline (unreachable); unauthorized (SSH key, password or host key refused, ADB key not
    allowed); busy (a farmbench agent is running there, another farmbench command runs on the phone, or its USB
    interface is held by an adb server); error (the device file or the device cannot be used as configured).
    """
    from farmbench.devices.config import configured_devices, resolve_device
    from farmbench.ui import table

    configs = [resolve_device(ref) for ref in refs] if refs else configured_devices()
    if probe:
        _probe_devices(configs, accept_new_host_key, as_json)
        return
    if not check:
        rows = [(d.name, d.kind, d.get("host") or "", d.source, d.get("description") or "") for d in configs]
        if as_json:
            click.echo(json.dumps([{"name": d.name, "kind": d.kind, "source": d.source} for d in configs], indent=2))
        else:
            click.echo(table(["device", "kind", "host", "config", "description"], rows))
        return
    from farmbench.devices.health import check_devices

    checked = check_devices(configs, accept_new_host_key=accept_new_host_key, timeout_s=timeout_s)
    if as_json:
        click.echo(json.dumps([h.to_json() for h in checked], indent=2))
    else:
        click.echo(table(["device", "kind", "address", "status", "battery", "hottest zone", "detail"],
                         [(h.name, h.kind, h.address, h.status, _battery_cell(h), _zone_cell(h), _cut(h.reason, 80))
                          for h in checked]))
        for health in checked:
            if not health.online:
                click.echo(f"\n{health.name}: {health.status}: {health.message or health.reason}")
                for line in health.busy_with:
                    click.echo(f"  running: {line}")
                if health.hint:
                    click.echo(f"  hint: {health.hint}")
    if not all(h.online for h in checked):
        sys.exit(EXIT_FAILURE)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _battery_cell(health: Any) -> str:
    if health.battery_percent is None:
        return ""
    status = f" {health.battery_status.lower()}" if health.battery_status else ""
    return f"{health.battery_percent}%{status}"


def _zone_cell(health: Any) -> str:
    return "" if health.max_temp_c is None else f"{health.max_temp_c:.1f} C {health.max_temp_zone}"


def _probe_devices(configs: Sequence[Any], accept_new_host_key: bool, as_json: bool) -> None:
    from farmbench.devices.probe import probe_device

    reports = [probe_device(d, accept_new_host_key=accept_new_host_key) for d in configs]
    if as_json:
        click.echo(json.dumps(reports, indent=2, default=str))
    else:
        for report in reports:
            click.echo(f"{report['name']} ({report['kind']}): {report['status']}")
            for key, value in report.get("summary", {}).items():
                click.echo(f"  {key:<12} {value}")
            if report.get("error"):
                click.echo(f"  error        {report['error']}")
    if any(r["status"] != "reachable" for r in reports):
        sys.exit(EXIT_FAILURE)


@cli.command(context_settings=SUBCOMMAND_CONTEXT)
@click.option("--quick", is_flag=True, help="Do not import runtimes and converters (TensorFlow takes ~10 s); "
                                            "read their versions from package metadata only.")
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON on stdout.")
@db_option
@cache_dir_option
def doctor(quick: bool, as_json: bool, db_path: Path | None, cache_dir: Path | None) -> None:
    """Check this machine: Python, runtimes, converters, ADB and SSH keys, ssh-agent, disk, the results database and
    the device files. Each finding is ok, warn or fail, with the fix. Exit 1 when anything fails."""
    from farmbench.doctor import run_checks, summary

    checks = run_checks(cache_dir=cache_dir, db_path=db_path, quick=quick)
    warnings, failures = summary(checks)
    if as_json:
        click.echo(json.dumps({"checks": [c.to_json() for c in checks], "warnings": warnings, "failures": failures},
                              indent=2))
    else:
        width = max(len(c.name) for c in checks)
        for check in checks:
            click.echo(f"{check.status:<4}  {check.name:<{width}}  {check.detail}")
            if check.fix and check.status != "ok":
                click.echo(f"{'':<4}  {'':<{width}}  fix: {check.fix}")
        click.echo(f"\n{len(checks)} checks: {warnings} warning{'s' if warnings != 1 else ''}, "
                   f"{failures} failure{'s' if failures != 1 else ''}")
    if failures:
        sys.exit(EXIT_FAILURE)


@cli.command("calibrate-power", context_settings=SUBCOMMAND_CONTEXT)
@click.argument("device_ref", metavar="DEVICE")
@click.option("--rest-s", type=click.FloatRange(min=0, min_open=True), default=10.0, show_default=True,
              help="Seconds sampled at rest first.")
@click.option("--busy-s", type=click.FloatRange(min=0, min_open=True), default=10.0, show_default=True,
              help="Seconds sampled under the busy loop.")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Busy-loop processes [default: the device's online CPUs].")
@click.option("--accept-new-host-key", is_flag=True, help="Record an unknown SSH host key on first contact.")
def calibrate_power(device_ref: str, rest_s: float, busy_s: float, workers: int | None,
                    accept_new_host_key: bool) -> None:
    """Infer a phone battery's current/voltage units and discharge sign, and write them to its state file.

    Samples the [power] source at rest, then under a busy loop on every CPU, and decides from the change: the
    busy loop draws more, in the discharge direction; magnitudes tell mA from µA. Unplug the phone first (ADB over
    Wi-Fi): a charger makes the battery current meaningless, and calibration refuses.
    """
    from farmbench.devices.config import resolve_device
    from farmbench.runners.telemetry import calibrate_power as calibrate

    device = resolve_device(device_ref)
    outcome = calibrate(device, rest_s=rest_s, busy_s=busy_s, workers=workers,
                        accept_new_host_key=accept_new_host_key)
    result = outcome.result
    click.echo(f"{outcome.device}: {result.describe()}")
    click.echo(f"decided: current_unit = {result.current_unit}, voltage_unit = {result.voltage_unit},"
               f" discharge_sign = {result.discharge_sign}")
    click.echo(f"wrote {outcome.path} ({outcome.rest_s:g} s at rest, {outcome.busy_s:g} s busy on"
               f" {outcome.workers} worker{'s' if outcome.workers != 1 else ''})")
    if not outcome.pointed_to:
        click.echo(f'add calibration = "{outcome.path}" to the [power] table of {device.source} to use it')


@cli.group(context_settings=SUBCOMMAND_CONTEXT)
def cache() -> None:
    """Inspect and prune the artifact cache."""


@cache.command("ls", context_settings=SUBCOMMAND_CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
@cache_dir_option
def cache_ls(as_json: bool, cache_dir: Path | None) -> None:
    """List cached artifacts, most recently used first."""
    from farmbench.ui import human_bytes, table

    store = _cache(cache_dir)
    entries = sorted(store.entries(), key=lambda e: e.last_used_s(), reverse=True)
    if as_json:
        click.echo(json.dumps([{"key": e.key, "name": e.manifest.get("name"), "path": str(e.model_path),
                                "size_bytes": e.size_bytes, "last_used": e.last_used_s()} for e in entries],
                              indent=2))
        return
    rows = [(e.key[:12], e.manifest.get("name"), human_bytes(e.size_bytes),
             (e.manifest.get("build") or {}).get("built_at", ""),
             datetime.fromtimestamp(e.last_used_s()).isoformat(timespec="seconds")) for e in entries]
    click.echo(table(["key", "artifact", "size", "built", "last used"], rows, right=(2,)))
    total = sum(e.size_bytes for e in entries)
    click.echo(f"\n{len(entries)} artifacts, {human_bytes(total)} in {store.root}")


@cache.command("prune", context_settings=SUBCOMMAND_CONTEXT)
@click.option("--older-than", "older_than_days", type=click.FloatRange(min=0), default=None,
              help="Remove artifacts unused for more than this many days.")
@click.option("--max-size-gb", type=click.FloatRange(min=0), default=None,
              help="Then remove the least recently used until the cache is at most this size.")
@click.option("--key", "keys", multiple=True, help="Remove artifacts whose key starts with this (repeatable).")
@click.option("--all", "everything", is_flag=True, help="Remove every artifact.")
@click.option("--dry-run", is_flag=True, help="Only say what would be removed.")
@cache_dir_option
def cache_prune(older_than_days: float | None, max_size_gb: float | None, keys: tuple[str, ...],
                everything: bool, dry_run: bool, cache_dir: Path | None) -> None:
    """Remove cached artifacts by age, total size, key, or all of them."""
    from farmbench.errors import UsageError
    from farmbench.ui import human_bytes

    if older_than_days is None and max_size_gb is None and not keys and not everything:
        raise UsageError("say what to prune", hint="use --older-than DAYS, --max-size-gb GB, --key KEY or --all")
    store = _cache(cache_dir)
    removed = store.prune(
        older_than_s=None if older_than_days is None else older_than_days * 86400,
        max_total_bytes=None if max_size_gb is None else int(max_size_gb * 2**30),
        keys=keys, everything=everything, dry_run=dry_run,
    )
    verb = "would remove" if dry_run else "removed"
    for entry in removed:
        click.echo(f"{verb} {entry.key[:12]} {entry.manifest.get('name')}")
    click.echo(f"{verb} {len(removed)} artifacts, {human_bytes(sum(e.size_bytes for e in removed))}")


@cli.command(context_settings=SUBCOMMAND_CONTEXT)
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]), default="bash")
def completion(shell: str) -> None:
    """Print the shell completion script. Example: farmbench completion bash >> ~/.bashrc"""
    from click.shell_completion import get_completion_class

    completer_class = get_completion_class(shell)
    if completer_class is None:  # pragma: no cover - click ships all three
        raise click.UsageError(f"no completion for {shell}")
    completer = completer_class(cli, {}, "farmbench", "_FARMBENCH_COMPLETE")
    click.echo(completer.source())


def _terminate_as_interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: run the CLI and turn FarmbenchError into a message and an exit code."""
    # `kill PID` (SIGTERM) stops farmbench the way Ctrl-C does, wherever it is; `run` handles both itself while it
    # measures (see farmbench.farm).
    signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    try:
        cli.main(args=list(argv) if argv is not None else None, prog_name="farmbench", standalone_mode=False)
    except FarmbenchError as err:
        click.echo(f"error: {err.format()}", err=True)
        sys.exit(err.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as err:
        err.show()
        sys.exit(EXIT_USAGE if isinstance(err, click.UsageError) else err.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    sys.exit(0)
