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

from edgetl.cli.options import (
    AliasedCommand,
    deprecated_alias,
    json_option,
    no_effect_flag,
    out_option,
    runtime_device_option,
)
from edgetl.errors import ConfigError
from edgetl.export.config import ExportConfig
from edgetl.spec.formats import (
    BACKENDS,
    CALIB_METHODS,
    CONSUMERS,
    CPU_ISA_CHOICES,
    INT8_FALLBACKS,
    INT8_FORMS,
    PRECISIONS,
)
from edgetl.trt.plan import DEFAULT_WORKSPACE_MIB

_D = ExportConfig  # defaults live in one place: the dataclass


@click.command(cls=AliasedCommand)
@click.argument("run", type=click.Path(path_type=Path))
@out_option("Bundle folder (default: the run folder).")
@click.option(
    "--opset", type=int, default=_D.opset, show_default=True, help="ONNX opset (checked against --trt-version)."
)
@click.option(
    "--for",
    "targets",
    type=click.Choice(CONSUMERS),
    multiple=True,
    default=_D.targets,
    show_default=True,
    help="Who runs the export (repeatable). bundle: edgetl's runtime, in OUT (always written); jetson-inference "
    "(imagenet), deepstream (Gst-nvinfer) and triton (a model repository) each get OUT/<name>/, a folder "
    "that consumer loads as it is, with a README.",
)
@click.option("--batch", type=int, default=_D.batch, help="Static batch size (default: dynamic batch axis).")
@no_effect_flag("--dynamic-batch", "a dynamic batch axis is the default")
@deprecated_alias(
    "--io-names",
    "--for",
    "targets",
    values={"default": ("bundle",), "jetson": ("jetson-inference",)},
    type=click.Choice(["default", "jetson"]),
)
@click.option(
    "--bake-preprocess",
    is_flag=True,
    help="Also write model_baked.onnx: uint8 NHWC input, scale + mean/std inside the graph.",
)
@click.option("--int8", is_flag=True, help="Also write model_int8.onnx (static Q/DQ, calibrated, accuracy-gated).")
@click.option(
    "--int8-form",
    type=click.Choice(INT8_FORMS),
    default=_D.int8_form,
    help="trt: symmetric signed Q/DQ for TensorRT (default with --trt); cpu: fastest on ONNX Runtime CPU.",
)
@deprecated_alias("--int8-target", "--int8-form", "int8_form", type=click.Choice(INT8_FORMS))
@click.option(
    "--int8-cpu-isa",
    type=click.Choice(CPU_ISA_CHOICES),
    default=_D.int8_cpu_isa,
    show_default=True,
    help="The CPU the cpu form is built for: vnni (U8S8), avx2 (x86 without VNNI: U8S8 with 7-bit weights, "
    "no saturation) or "
    "arm64 (S8S8, e.g. a Jetson's Cortex-A78AE); auto: this machine's.",
)
@click.option(
    "--calib-data",
    default=_D.calib_data,
    help="Calibration images: class folders, a flat folder, or a calibration manifest.json to rebuild "
    "(default: the run's training split).",
)
@click.option("--calib-size", type=int, default=_D.calib_size, show_default=True)
@click.option(
    "--calib-method",
    type=click.Choice(CALIB_METHODS),
    default=_D.calib_method,
    help="Default: entropy for the trt form (TensorRT's own calibrator; its symmetric ranges need outliers "
    "clipped), minmax for the cpu form.",
)
@click.option(
    "--calib-dir",
    default=_D.calib_dir,
    show_default=True,
    help="Calibration manifests go to CALIB_DIR/<run name>-<hash of the run path>/manifest.json.",
)
@click.option(
    "--max-int8-drop",
    type=float,
    default=_D.max_int8_drop,
    show_default=True,
    help="Fail (exit 3) unless the 95% upper bound of INT8's top-1 disagreement with fp32 (val + held-out "
    "train images) is within this many points.",
)
@click.option(
    "--int8-fallback",
    type=click.Choice(INT8_FALLBACKS),
    default=_D.int8_fallback,
    show_default=True,
    help="auto: when INT8 misses the gate, keep the fewest most quantization-sensitive layers (ranked on "
    "calibration images) in fp32 until it passes (the last --int8-recover step); none: leave that step out.",
)
@click.option(
    "--int8-fallback-max-layers",
    type=int,
    default=_D.int8_fallback_max_layers,
    show_default=True,
    help="The most layers --int8-fallback auto may keep in fp32.",
)
@click.option(
    "--gate-data",
    default=_D.gate_data,
    help="A folder of unlabelled images from the deployment's distribution that the INT8 gate also judges.",
)
@click.option(
    "--int8-recover",
    default=_D.int8_recover,
    show_default=True,
    help="When INT8 misses its gate, try these steps cheapest first and keep the first that passes: auto (all), "
    "none, or a comma list of head (re-solve a feature extractor's linear head on its INT8 features; judged on "
    "labelled held-out images) and fallback (layers in fp32, as --int8-fallback auto).",
)
@click.option(
    "--int8-recover-budget",
    type=float,
    default=_D.int8_recover_budget,
    show_default=True,
    help="Seconds the recovery steps may take; when spent, no further step starts, the best attempt is "
    "reported and export exits 3.",
)
@click.option("--fp16", is_flag=True, help="FP16 engine (and model_fp16.onnx for TensorRT >= 11).")
@click.option("--trt", is_flag=True, help="Build the TensorRT engine here (needs TensorRT and a GPU).")
@click.option(
    "--trt-version",
    default=_D.trt_version,
    show_default=True,
    help="TensorRT on the device: 8.5, 8.6, 10.3, 10.x, 11.x or a full version; sets ONNX opset/IR limits.",
)
@deprecated_alias("--target-trt", "--trt-version", "trt_version")
@click.option(
    "--dla-core",
    type=int,
    default=_D.dla_core,
    help="Build the engine for this Jetson DLA core (layers it cannot run fall back to the GPU; fp16 or int8).",
)
@click.option("--min-batch", type=int, default=_D.min_batch, help="Optimisation profile (dynamic batch), default 1.")
@click.option("--opt-batch", type=int, default=_D.opt_batch, help="Default: --min-batch.")
@click.option("--max-batch", type=int, default=_D.max_batch, help="Default: 8 (or --opt-batch if larger).")
@click.option(
    "--workspace",
    "workspace_mib",
    type=int,
    default=_D.workspace_mib,
    show_default=True,
    help="TensorRT workspace memory pool, MiB.",
)
@click.option(
    "--timing-cache", default=_D.timing_cache, help="Persistent TensorRT timing cache file (read and updated)."
)
@click.option(
    "--val-images",
    type=int,
    default=_D.val_images,
    show_default=True,
    help="Validation images for the parity and accuracy gates (all of them up to this many).",
)
@click.option(
    "--gate-images",
    type=int,
    default=_D.gate_images,
    show_default=True,
    help="Training images not used for calibration that the INT8 gate adds to the val images (at most).",
)
@click.option("--seed", type=int, default=_D.seed, show_default=True)
@json_option()
def export(
    run: Path, out: Optional[Path], batch: Optional[int], dynamic_batch: bool, as_json: bool, **options: Any
) -> None:
    """Export RUN to a bundle: ONNX checked against PyTorch, optional INT8/FP16, TensorRT engine.

    Exits 3 when an artifact fails its gate (parity, INT8 accuracy, fp16); see export_report.json.

    \b
    edgetl export models/photos                       # model.onnx + build_engine.sh
    edgetl export models/photos --int8 --int8-form cpu
    edgetl export models/photos --trt --fp16          # engine (on a machine with TensorRT)
    edgetl export models/photos --for jetson-inference --for deepstream --out bundles/photos
    edgetl export models/photos --for triton --int8   # + OUT/triton/: a Triton model repository
    """
    if batch is not None and dynamic_batch:
        raise ConfigError("--batch and --dynamic-batch exclude each other")
    config = ExportConfig(run=str(run), out=None if out is None else str(out), batch=batch, **options)
    from edgetl.export.job import export_run  # torch and onnx: seconds to import, after the options are checked
    from edgetl.export.report import format_report

    export_run(
        config, on_report=lambda r: click.echo(json.dumps(r, indent=2, default=float) if as_json else format_report(r))
    )
    click.echo("bundle: {}".format(out or run))


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
    from edgetl.runtime.classifier import Classifier
    from edgetl.spec.bundle import Bundle

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
