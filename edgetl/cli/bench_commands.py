"""CLI: the ``bench`` group. Each subcommand is a thin wrapper over one ``edgetl.bench.<name>`` function;
add a new benchmark as ``@bench.command("name")`` below (``COMMANDS`` registers the group once)."""

import json
from pathlib import Path
from typing import Any, Optional, Sequence, Tuple

import click

from edgetl.bench.latency import MAX_REGRESSION_PCT, LatencyConfig
from edgetl.bench.variants_config import VARIANTS_GROUPS, VariantsConfig
from edgetl.cli.declared import DeclaredCommand
from edgetl.cli.options import (
    batch_size_option,
    checked_out_path,
    device_option,
    json_option,
    runtime_device_option,
    workers_option,
)
from edgetl.contracts.backbones import BACKBONES, DEFAULT_ARCH
from edgetl.contracts.formats import BACKENDS

_L = LatencyConfig  # defaults live in one place: the dataclasses


def _listed(values: Sequence[int]) -> str:
    return ",".join(str(v) for v in values)


@click.group()
def bench() -> None:
    """Benchmarks: which variant to ship (variants), inference latency with a CI gate (latency),
    input pipelines vs model (data).

    \b
    edgetl bench variants photos/ --arch mobilenet_v2
    edgetl bench latency models/photos --backend onnx --backend onnx-int8 --batch 1,8
    edgetl bench data photos/ --arch mobilenet_v2
    """


def _batches(ctx: click.Context, param: click.Parameter, value: str) -> Tuple[int, ...]:
    try:
        batches = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter("a comma-separated list of batch sizes, e.g. 1,8") from None
    if not batches or min(batches) < 1:
        raise click.BadParameter("batch sizes must be >= 1")
    return batches


@bench.command("latency")
@click.argument("models", nargs=-1, required=True)
@click.option(
    "--backend",
    "backends",
    multiple=True,
    default=_L.backends,
    show_default=True,
    type=click.Choice(BACKENDS),
    help="For a bundle or run folder; repeat to time several. Files use their own backend.",
)
@click.option(
    "--batch", "batches", default=_listed(_L.batches), show_default=True, callback=_batches, help="Batch sizes."
)
@click.option("--warmup", type=click.IntRange(min=0), default=_L.warmup, show_default=True)
@click.option("--iters", type=click.IntRange(min=1), default=_L.iters, show_default=True)
@click.option(
    "--rounds",
    type=click.IntRange(min=1),
    default=_L.rounds,
    show_default=True,
    help="Timing rounds, each interleaved with the reference workload.",
)
@click.option("--threads", type=click.IntRange(min=1), default=_L.threads, help="CPU threads (ONNX Runtime, torch).")
@runtime_device_option(_L.device)
@click.option(
    "--json-out",
    type=click.Path(path_type=Path),
    default=None,
    callback=checked_out_path(folder=False),
    help="Write the report here (use it later as --baseline).",
)
@click.option("--baseline", type=click.Path(path_type=Path), default=None, help="A report from an earlier run.")
@click.option(
    "--max-regression",
    type=click.FloatRange(min=0),
    default=MAX_REGRESSION_PCT,
    show_default=True,
    help="Allowed slowdown in percent of the reference-relative time vs --baseline.",
)
def bench_latency(
    models: tuple,
    backends: tuple,
    batches: tuple,
    warmup: int,
    iters: int,
    rounds: int,
    threads: Optional[int],
    device: str,
    json_out: Optional[Path],
    baseline: Optional[Path],
    max_regression: float,
) -> None:
    """Latency p50/p90/p99/mean and img/s of MODELS (.onnx, .engine, bundle or run folder).

    With --baseline, exits 3 when a model got slower than the baseline by more than --max-regression
    percent, comparing times relative to a reference workload timed alongside (robust to noisy CI).

    \b
    edgetl bench latency models/photos --backend torch --backend onnx --backend onnx-int8
    edgetl bench latency model.onnx --batch 1 --threads 2 --json-out latency.json
    edgetl bench latency model.onnx --batch 1 --threads 2 --baseline latency.json --max-regression 15
    """
    from edgetl.bench import latency

    previous = None if baseline is None else latency.read_report(baseline)  # a bad baseline fails before the timing
    report = latency.bench_latency(
        latency.LatencyConfig(models, backends, batches, warmup, iters, rounds, threads, device)
    )
    if json_out is not None:
        latency.write_report(json_out, report)
    verdicts = None if previous is None else latency.compare_to_baseline(report, previous, max_regression)
    click.echo(latency.format_latency(report, verdicts))
    latency.fail_on_regressions(verdicts, max_regression)


@bench.command("data")
@click.argument("data", required=False, type=click.Path(path_type=Path))
@click.option("--arch", type=click.Choice(sorted(BACKBONES)), default=DEFAULT_ARCH, show_default=True)
@batch_size_option(32)
@workers_option
@device_option("auto")
@click.option(
    "--batches",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="Batches timed per pipeline (after one warm-up batch).",
)
@click.option(
    "--steps",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
    help="Training steps timed per strategy (after one warm-up step).",
)
@click.option("--val-split", type=float, default=None, help="As for finetune, when DATA has no train/ and val/.")
@json_option()
def bench_data(
    data: Optional[Path],
    arch: str,
    batch_size: int,
    workers: Optional[int],
    device: str,
    batches: int,
    steps: int,
    val_split: Optional[float],
    as_json: bool,
) -> None:
    """Is training on DATA input-bound? Images/s of each --cache pipeline next to the model's training step.

    \b
    edgetl bench data photos/ --arch mobilenet_v2
    edgetl bench data photos/ --workers 8 --json > data-bench.json
    """
    from edgetl.bench.data import bench_data as run_bench_data
    from edgetl.bench.data import format_bench_data

    report = run_bench_data(
        data,
        arch=arch,
        batch_size=batch_size,
        workers=workers,
        device=device,
        batches=batches,
        steps=steps,
        val_split=val_split,
    )
    click.echo(json.dumps(report, indent=2) if as_json else format_bench_data(report))


@bench.command("variants", cls=DeclaredCommand, configs=(VariantsConfig,), groups=VARIANTS_GROUPS)
@json_option()
@click.pass_context
def bench_variants(ctx: click.Context, as_json: bool, **options: Any) -> None:
    """Which variant should I ship? Train frozen (with and without the feature cache), cut, partial and
    full variants on DATA, export each, and compare training cost, accuracy and latency per backend.

    \b
    edgetl bench variants photos/ --arch mobilenet_v2
    edgetl bench variants photos/ --cut-at stage4 --trainable-stages 3 --threads 4 --out models/compare
    """
    from edgetl.bench.variants import compare_variants
    from edgetl.bench.variants_report import format_text

    config = VariantsConfig(**options)
    report = compare_variants(config, progress=ctx.obj["progress"])
    click.echo(json.dumps(report, indent=2) if as_json else format_text(report))


COMMANDS = (bench,)
