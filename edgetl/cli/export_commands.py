"""CLI: ``export`` (needs torch), ``predict`` and ``build-engine`` (torch-free, run on the device).

Nothing heavy is imported at module import: each command imports its stage when it runs.
Python 3.8 syntax: ``predict`` and ``build-engine`` run on JetPack 5.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, List, Optional, Sequence

import click

from edgetl.cli.declared import DeclaredCommand
from edgetl.cli.options import (
    AliasedCommand,
    deprecated_alias,
    json_option,
    no_effect_flag,
    runtime_device_option,
)
from edgetl.contracts.formats import BACKENDS, INT8_FORMS, PRECISIONS
from edgetl.errors import ConfigError
from edgetl.export.config import EXPORT_GROUPS, ExportConfig
from edgetl.trt.plan import DEFAULT_WORKSPACE_MIB


class ExportCommand(DeclaredCommand, AliasedCommand):
    """``edgetl export``: its options are ExportConfig's fields (and the deprecated aliases of renamed ones)."""


@click.command(cls=ExportCommand, configs=(ExportConfig,), groups=EXPORT_GROUPS)
@no_effect_flag("--dynamic-batch", "a dynamic batch axis is the default")
@deprecated_alias(
    "--io-names",
    "--for",
    "targets",
    values={"default": ("bundle",), "jetson": ("jetson-inference",)},
    type=click.Choice(["default", "jetson"]),
)
@deprecated_alias("--int8-target", "--int8-form", "int8_form", type=click.Choice(INT8_FORMS))
@deprecated_alias("--target-trt", "--trt-version", "trt_version")
@json_option()
def export(dynamic_batch: bool, as_json: bool, **options: Any) -> None:
    """Export RUN to a bundle: ONNX checked against PyTorch, optional INT8/FP16, TensorRT engine.

    Exits 3 when an artifact fails its gate (parity, INT8 accuracy, fp16); see export_report.json.

    \b
    edgetl export models/photos                       # model.onnx + build_engine.sh
    edgetl export models/photos --int8 --int8-form cpu
    edgetl export models/photos --trt --fp16          # engine (on a machine with TensorRT)
    edgetl export models/photos --for jetson-inference --for deepstream --out bundles/photos
    edgetl export models/photos --for triton --int8   # + OUT/triton/: a Triton model repository
    edgetl export models/photos --config bundles/old/export_report.json   # an earlier export's options
    """
    if options["batch"] is not None and dynamic_batch:
        raise ConfigError("--batch and --dynamic-batch exclude each other")
    config = ExportConfig(**options)
    from edgetl.export.job import export_run  # torch and onnx: seconds to import, after the options are checked
    from edgetl.export.report import format_report

    export_run(
        config, on_report=lambda r: click.echo(json.dumps(r, indent=2, default=float) if as_json else format_report(r))
    )
    click.echo("bundle: {}".format(options["out"] or options["run"]))


def expand_images(inputs: Sequence[Path]) -> List[Path]:
    """Files as given; directories expand to the image files under them (sorted)."""
    from edgetl.data.folders import image_files

    paths = []  # type: List[Path]
    for item in inputs:
        if item.is_dir():
            paths += image_files(item)
        else:
            paths.append(item)
    return paths


@click.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--backend",
    type=click.Choice(BACKENDS),
    default=BACKENDS[0],
    show_default=True,
    help="auto: TensorRT engine if usable, else ONNX Runtime, else PyTorch.",
)
@runtime_device_option("cpu")
@click.option("--topk", type=int, default=5, show_default=True)
@json_option("one object per image")
def predict(bundle: Path, images: Sequence[Path], backend: str, device: str, topk: int, as_json: bool) -> None:
    """Classify IMAGES (files or folders) with BUNDLE (an exported bundle or a run folder).

    Unreadable images are reported one by one; the exit status is 1 if any was.

    \b
    edgetl predict models/photos test/cat.jpg test/more/
    edgetl predict bundles/photos frames/ --backend trt --topk 3 --json
    """
    from edgetl.contracts.bundle import Bundle
    from edgetl.runtime.classifier import Classifier

    paths = expand_images(images)
    if not paths:
        raise ConfigError("no images found in {}".format(", ".join(str(p) for p in images)))
    failed = 0
    with Classifier(Bundle.load(bundle), backend=backend, device=device, topk=topk) as classifier:
        click.echo("backend: {}".format(classifier.choice.backend), err=True)
        for path, result in classifier.classify_paths(paths):
            if isinstance(result, str):
                failed += 1
                click.echo(
                    json.dumps({"image": path, "error": result}) if as_json else "{}: error: {}".format(path, result),
                    err=not as_json,
                )
            elif as_json:
                click.echo(json.dumps(result.to_dict()))
            else:
                click.echo(
                    "{}: {}".format(
                        path,
                        ", ".join(
                            "{} {:.1%}".format(label, p) for label, p in zip(result.labels, result.probabilities)
                        ),
                    )
                )
    if failed:
        click.echo("{} of {} image(s) could not be read".format(failed, len(paths)), err=True)
        sys.exit(1)


@click.command("build-engine")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--precision", type=click.Choice(PRECISIONS), default="fp16", show_default=True)
@click.option("--min-batch", type=int, default=None, help="Default: the bundle's (its static batch or export profile).")
@click.option("--opt-batch", type=int, default=None, help="Default: the bundle's, else --min-batch.")
@click.option("--max-batch", type=int, default=None, help="Default: the bundle's, else max(8, --opt-batch).")
@click.option("--workspace", "workspace_mib", type=int, default=DEFAULT_WORKSPACE_MIB, show_default=True, help="MiB.")
@click.option("--timing-cache", default=None, help="Persistent TensorRT timing cache file.")
@click.option("--dla-core", type=int, default=None, help="Build for this Jetson DLA core (with GPU fallback).")
def build_engine(
    bundle: Path,
    precision: str,
    min_batch: Optional[int],
    opt_batch: Optional[int],
    max_batch: Optional[int],
    workspace_mib: int,
    timing_cache: Optional[str],
    dla_core: Optional[int],
) -> None:
    """Build a TensorRT engine from BUNDLE's ONNX on this device (torch-free), write its sidecar and verify it
    on the bundle's verification sample (exit 3 and the engine moved to <engine>.rejected when it fails).

    Batch sizes not given come from the bundle: a static-batch bundle builds its fixed batch, a
    dynamic one the profile it was exported with (1/1/8 if none was recorded).

    \b
    edgetl build-engine bundles/photos --precision fp16
    """
    from edgetl.trt.build import build_bundle_engine

    batches = (min_batch, opt_batch, max_batch)
    click.echo(build_bundle_engine(bundle, precision, batches, workspace_mib, timing_cache, dla_core))


COMMANDS = (export, predict, build_engine)
