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
@click.option("--progress", type=click.Choice(["auto", "live", "plain"]), default="auto", show_default=True,
              help="live: per-device lines and an overall bar with ETA (a terminal); plain: log lines (CI); auto"
                   " picks live on a terminal outside CI.")
@click.option("--quiet", "-q", is_flag=True, help="No progress on stderr.")
@cache_dir_option
def run(sweep_path: Path | None, family: tuple[str, ...], width: tuple[str, ...], resolution: tuple[str, ...],
        quant: tuple[str, ...], formats: tuple[str, ...], weights: str | None, seed: int | None,
        minimalistic: bool | None, models: tuple[Path, ...], devices: tuple[str, ...], runtimes: tuple[str, ...],
        threads: tuple[str, ...], xnnpack: tuple[str, ...], delegates: tuple[str, ...], runs: int | None, min_s: float | None,
        max_s: float | None, warmup_runs: int | None, warmup_min_s: float | None, repeats: int | None,
        affinity: str | None, order_seed: int | None, timeout_s: float | None, drift: bool | None,
        eval_images: int | None, eval_dir: Path | None, retries: int | None, unhealthy_after: int | None,
        backoff_s: float | None, backoff_max_s: float | None, db_path: Path | None, accept_new_host_key: bool,
        resume_id: str | None, jobs: int, max_memory_gb: float | None, as_json: bool, progress: str, quiet: bool,
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
        if as_json:
            click.echo(json.dumps({**summary.to_json(), "db": str(store.path)}, indent=2, default=str))
        else:
            if not summary.aborted:
                _print_results(store, [summary.run_id])
            _print_run_summary(summary, store.path)
    _exit(summary.exit_code, hard=summary.aborted)


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
@click.option("--probe", is_flag=True, help="Connect to each device and describe it.")
@click.option("--device", "-d", "refs", multiple=True, help="Only these devices (names or URLs).")
@click.option("--accept-new-host-key", is_flag=True, help="Record unknown SSH host keys on first contact.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
def devices(probe: bool, refs: tuple[str, ...], accept_new_host_key: bool, as_json: bool) -> None:
    """List configured devices; with --probe, connect and show OS, CPU, governors, Python and runtimes."""
    from farmbench.devices.config import configured_devices, resolve_device
    from farmbench.devices.probe import probe_device
    from farmbench.ui import table

    configs = [resolve_device(ref) for ref in refs] if refs else configured_devices()
    if not probe:
        rows = [(d.name, d.kind, d.get("host") or "", d.source, d.get("description") or "") for d in configs]
        if as_json:
            click.echo(json.dumps([{"name": d.name, "kind": d.kind, "source": d.source} for d in configs], indent=2))
        else:
            click.echo(table(["device", "kind", "host", "config", "description"], rows))
        return
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
