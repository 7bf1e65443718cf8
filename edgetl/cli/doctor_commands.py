"""CLI: ``edgetl doctor``, what works on this machine (and whether a bundle's engines fit it), and
``edgetl doctor --gpu-selfcheck``, every CUDA path on small real inputs against its CPU twin."""

import sys
from pathlib import Path
from typing import Optional

import click

from edgetl.cli.options import json_option, out_option

SELFCHECK_OUT = Path("models") / "gpu-selfcheck"  # models/ is where edgetl writes by default


@click.command("doctor")
@click.argument("bundle", required=False, type=click.Path(path_type=Path, exists=True, file_okay=False))
@json_option("the items (and the raw facts)")
@click.option(
    "--gpu-selfcheck",
    is_flag=True,
    help="Run every CUDA path on the demo data against its CPU twin and write a report (needs edgetl[train]).",
)
@out_option(
    "--gpu-selfcheck: folder for gpu_selfcheck.md/.json and its scratch files [default: models/gpu-selfcheck].",
    file_okay=False,
)
def doctor(bundle: Optional[Path], as_json: bool, gpu_selfcheck: bool, out: Optional[Path]) -> None:
    """What a Jetson or workstation user runs first: Python, numpy, onnx, onnxruntime and the execution
    providers that really run, torch and CUDA, TensorRT and cuda-python, the JetPack release with its
    --trt-version, the power mode, and which export targets and predict backends work here. Exit code 1
    only when something edgetl needs is broken.

    \b
    edgetl doctor
    edgetl doctor models/photos          # do its engines and ONNX models fit this device?
    edgetl doctor --gpu-selfcheck --out selfcheck/
    """
    if gpu_selfcheck:
        out = out or SELFCHECK_OUT
        from edgetl.diagnostics.gpu_selfcheck import run_selfcheck

        report = run_selfcheck(out, command="edgetl doctor --gpu-selfcheck --out {}".format(out))
        click.echo(report.summary())
        click.echo("report: {} and {}".format(report.markdown_path, report.json_path))
        sys.exit(1 if report.failed else 0)

    from edgetl.diagnostics.doctor import check_bundle, collect_facts, diagnose, format_items, is_broken, report_json

    facts = collect_facts()
    items = diagnose(facts)
    if bundle is not None:
        items += check_bundle(bundle, facts)
    click.echo(report_json(items, facts) if as_json else format_items(items))
    sys.exit(1 if is_broken(items) else 0)


COMMANDS = [doctor]
