"""CLI: ``verify`` (torch-free, runs on the device: ``python3 -m edgetl verify BUNDLE``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import click

from edgetl.cli.options import json_option
from edgetl.runtime.verify import TOLERANCES

_TOLERANCES = "Tolerances, as fractions of max(1, max |reference|): " + ", ".join(
    "{} {:g}".format(precision, tolerance) for precision, tolerance in TOLERANCES.items()
)


@click.command(epilog=_TOLERANCES)
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option(
    "--only",
    multiple=True,
    metavar="FILE",
    help="Verify only this model or engine of the bundle (repeatable); it must be able to run here.",
)
@json_option()
def verify(bundle: Path, only: Sequence[str], as_json: bool) -> None:
    """Run BUNDLE's ONNX models (ONNX Runtime) and TensorRT engines on its verification sample and compare
    them with the reference outputs of the export.

    Exits 3 with one line when the sample or a model changed after export, or when a model or engine
    disagrees with its reference: a top-1 differs on any image, or max |difference| exceeds its precision's
    tolerance (below). Engines that cannot run here (no TensorRT) are listed as not run.

    \b
    python3 -m edgetl verify bundles/photos
    edgetl verify bundles/photos --only model_fp16.engine --json
    """
    from edgetl.runtime.verify import format_report, raise_on_failure, verify_bundle

    report = verify_bundle(bundle, tuple(only))
    raise_on_failure(report)
    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else format_report(report))


COMMANDS = (verify,)
