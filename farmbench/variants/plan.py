"""From a sweep to built artifacts: the plain function behind ``farmbench build`` (and the first stage of ``run``)."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from farmbench.config import Sweep
from farmbench.errors import UsageError
from farmbench.variants.build import BuildOptions, BuildResult, build_variants, import_model
from farmbench.variants.spec import Variant, Weights, expand_grid, imagenet_weights_status


def weights_of(sweep: Sweep) -> Weights:
    grid = sweep.variants
    if grid.weights == "random":
        return Weights("random", seed=grid.seed)
    if grid.weights == "imagenet":
        return Weights("imagenet")
    from farmbench.variants.inspect import sha256_file

    path = Path(grid.weights)
    if not path.is_file():
        raise UsageError(f"weights file {path} does not exist")
    return Weights("file", sha256=sha256_file(path), path=str(path))


def variants_of(sweep: Sweep) -> list[Variant]:
    grid = sweep.variants
    if not grid.family:
        return []
    return expand_grid(grid.family, grid.width, grid.resolution, grid.quant, grid.format, weights_of(sweep),
                       minimalistic=grid.minimalistic)


@dataclass(frozen=True)
class PlannedVariant:
    """One row of ``farmbench build --plan``: what would be built and whether ImageNet weights exist for it."""

    name: str
    imagenet: str


def plan_rows(sweep: Sweep) -> list[PlannedVariant]:
    rows = [PlannedVariant(v.name(), imagenet_weights_status(v.family, v.width, v.resolution))
            for v in variants_of(sweep)]
    rows += [PlannedVariant(path.name, "n/a (your file)") for path in sweep.variants.models]
    return rows


def build_sweep(sweep: Sweep, options: BuildOptions) -> list[BuildResult]:
    """Build every variant of the sweep and import its own model files; failures are results, not exceptions."""
    results = build_variants(variants_of(sweep), options)
    for path in sweep.variants.models:
        result = import_model(path, options.cache)
        if options.on_event:
            options.on_event({"event": "done", "name": result.name, "status": result.status,
                              "seconds": result.seconds, "error": result.error})
        results.append(result)
    return results


def build_references(results: list[BuildResult], options: BuildOptions) -> dict[str, BuildResult]:
    """The fp32 twin (same family, width, resolution, weights and format) of every built variant, as the reference
    for its accuracy drift: artifact key -> twin. Twins the sweep did not ask for are built too (cached, and cheap
    once the sweep built their Keras model); they are references only, never measured. Your own model files have
    no twin and are left out."""
    twins: dict[str, Variant] = {}
    for result in results:
        if result.entry is not None and result.variant is not None:
            twins[result.key] = Variant(result.variant.group, "fp32", result.variant.format)
    by_variant = {r.variant: r for r in results if r.variant is not None and r.entry is not None}
    missing = sorted({twin for twin in twins.values() if twin not in by_variant})
    if missing:
        quiet = BuildOptions(cache=options.cache, jobs=options.jobs, force=False,
                             memory_budget_mb=options.memory_budget_mb, on_event=None)
        for built in build_variants(missing, quiet):
            if built.variant is not None and built.entry is not None:
                by_variant[built.variant] = built
    return {key: by_variant[twin] for key, twin in twins.items() if twin in by_variant}


def copy_out(results: list[BuildResult], out_dir: Path) -> list[Path]:
    """Copy built artifacts and their manifests to ``out_dir`` under readable names
    (``mobilenet_v2_a0.35_r96_int8.tflite`` and ``....tflite.json``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for result in results:
        if result.entry is None:
            continue
        target = out_dir / result.name
        shutil.copyfile(result.entry.model_path, target)
        manifest_path = out_dir / f"{result.name}.json"
        manifest_path.write_text(json.dumps(result.entry.manifest, indent=2, sort_keys=True))
        written += [target, manifest_path]
    return written
