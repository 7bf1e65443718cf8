"""CLI: the ``bench`` group. Each subcommand is a thin wrapper over one ``edgetl.bench.<name>`` function;
add a new benchmark as ``@bench.command("name")`` below (``COMMANDS`` registers the group once)."""

import json
from pathlib import Path
from typing import Optional

import click

from ..backbones import BACKBONES, DEFAULT_ARCH
from .options import workers_option


@click.group()
def bench() -> None:
    """Benchmarks: input pipelines vs model throughput (data).

    \b
    edgetl bench data photos/ --arch mobilenet_v2
    """


@bench.command("data")
@click.argument("data", required=False, type=click.Path(path_type=Path))
@click.option("--arch", type=click.Choice(sorted(BACKBONES)), default=DEFAULT_ARCH, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@workers_option
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--batches", type=click.IntRange(min=1), default=20, show_default=True,
              help="Batches timed per pipeline (after one warm-up batch).")
@click.option("--steps", type=click.IntRange(min=1), default=5, show_default=True,
              help="Training steps timed per strategy (after one warm-up step).")
@click.option("--val-split", type=float, default=None, help="As for finetune, when DATA has no train/ and val/.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def bench_data(data: Optional[Path], arch: str, batch_size: int, workers: Optional[int], device: str, batches: int,
               steps: int, val_split: Optional[float], as_json: bool) -> None:
    """Is training on DATA input-bound? Images/s of each --cache pipeline next to the model's training step.

    \b
    edgetl bench data photos/ --arch mobilenet_v2
    edgetl bench data photos/ --workers 8 --json > data-bench.json
    """
    from ..bench.data import bench_data as run_bench_data, format_bench_data

    report = run_bench_data(data, arch=arch, batch_size=batch_size, workers=workers, device=device, batches=batches,
                            steps=steps, val_split=val_split)
    click.echo(json.dumps(report, indent=2) if as_json else format_bench_data(report))


COMMANDS = (bench,)
