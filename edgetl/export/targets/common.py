"""What every deployment target shares: the inputs an export hands it (``TargetInputs``), its own ONNX
exported and checked against PyTorch like the bundle's, its labels and README, and the val images its
accuracy is measured on."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from edgetl.contracts.formats import CONSUMERS, DeployTarget
from edgetl.contracts.preprocess import PreprocessSpec
from edgetl.core.fileio import atomic_write_text
from edgetl.core.options import command_args
from edgetl.errors import ConfigError
from edgetl.export.config import ExportConfig
from edgetl.export.parity import EvalImages, compare, fp32_failures, normalized, onnx_outputs, random_inputs, top1
from edgetl.export.torch_to_onnx import PIXELS_FLOAT_NCHW, ExportModule, export_onnx, module_outputs, onnx_metadata

RANDOM_INPUTS = 8


class TargetFailed(Exception):
    """A target's file failed its check: its folder is not written. ``failures`` says why."""

    def __init__(self, failures: List[str]) -> None:
        super().__init__("; ".join(failures))
        self.failures = failures


@dataclass
class TargetInputs:
    """What the export hands each target: the trained model and the bundle it wrote."""

    config: ExportConfig
    out: Path  # where the export stages the bundle's files; a target writes <out>/<its folder>/ there
    bundle: Path  # the bundle folder the staged files are renamed into (edgetl.export.bundle_folder.publish)
    model: Any  # the trained torch model, in eval mode
    payload: Dict[str, Any]  # the checkpoint's payload: class names, arch, strategy
    spec: PreprocessSpec
    images: EvalImages  # the val images after the training geometry
    images_for: Callable[[str], EvalImages]  # the same val images laid out in a geometry (spec.formats.GEOMETRIES)
    opset: int
    ir_version: int
    checkpoint_sha: str
    manifest: Dict[str, Any]  # the bundle's manifest: its checked models, engines, calibration cache
    report: Dict[str, Any] = field(default_factory=dict)  # the bundle's export report (gates, INT8 fallback)

    @classmethod
    def of_export(cls, job: Any) -> "TargetInputs":
        """The inputs from a running export (``edgetl.export.job``), once its bundle models are checked."""
        return cls(
            job.config, job.stage, job.out, job.model, job.payload, job.spec, job.images, job.images_for, job.opset,
            job.ir_version, job.checkpoint_sha, job.manifest, job.report,
        )  # fmt: skip

    @property
    def class_names(self) -> List[str]:
        return list(self.payload["class_names"])

    @property
    def run_name(self) -> str:
        return Path(self.config.run).resolve().name

    def command(self) -> str:
        """The exact ``edgetl export`` command of this export."""
        return "edgetl export " + " ".join(shlex.quote(a) for a in command_args(self.config))


def geometry_note(consumer: str, geometry: str) -> str:
    """What a target's device figures were measured on (``TargetInputs.images_for(geometry)``)."""
    return (
        "Measured with ONNX Runtime on the run's val images laid out as {} does it (`{}`: the pixel geometry is "
        "exact; JPEG decoding and the device's interpolation are approximated, see the export report).".format(
            consumer, geometry
        )
    )


def pixel_batch(crops: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, 3) crops -> float32 (N, 3, H, W) pixels 0-255, as nvinfer hands them over before scaling."""
    return np.ascontiguousarray(crops.transpose(0, 3, 1, 2).astype(np.float32))


def _inputs_for(layout: str, crops: np.ndarray, spec: PreprocessSpec, seed: int) -> Dict[str, np.ndarray]:
    """The val batch and random inputs a model of ``layout`` takes."""
    if layout == PIXELS_FLOAT_NCHW:
        rng = np.random.default_rng(seed)
        size = spec.input_size
        return {
            "val": pixel_batch(crops),
            "random": rng.uniform(0, 255, (RANDOM_INPUTS, 3, size, size)).astype(np.float32),
        }
    return {"val": normalized(crops, spec), "random": random_inputs(RANDOM_INPUTS, spec, "NCHW", seed)}


def checked_onnx(
    inputs: TargetInputs,
    path: Path,
    target: str,
    module: ExportModule,
    batch: Optional[int],
    kind: str = "fp32",
) -> Dict[str, Any]:
    """Export ``module`` to ``path`` with ``target``'s tensor names and check it against PyTorch on the
    val images and random inputs (the fp32 parity gate); returns its report section, raises TargetFailed."""
    names: DeployTarget = CONSUMERS[target]
    metadata = onnx_metadata(
        inputs.payload,
        inputs.spec,
        inputs.checkpoint_sha,
        model_kind=kind,
        input_layout=module.input_layout,
        output_kind="probabilities" if module.softmax else "logits",
        deploy_target=target,
    )
    export_onnx(
        module, path, inputs.spec, names.input_name, names.output_name, batch, inputs.opset, inputs.ir_version, metadata
    )
    feeds = _inputs_for(module.input_layout, inputs.images.crops, inputs.spec, inputs.config.seed)
    module.eval()
    reference = np.concatenate([module_outputs(module, feeds["val"]), module_outputs(module, feeds["random"])])
    real = onnx_outputs(path, feeds["val"], batch)
    candidate = np.concatenate([real, onnx_outputs(path, feeds["random"], batch)])
    parity = compare(reference, candidate, len(real))
    failures = ["{}: {}".format(path.name, f) for f in fp32_failures(parity)]
    if failures:
        raise TargetFailed(failures)
    return {"file": path.name, "parity": parity.to_dict(), "val_top1": top1(real, inputs.images.labels)}


def val_top1(
    path: Path, images: EvalImages, batch: Optional[int], prepare: Callable[[np.ndarray], np.ndarray]
) -> float:
    """Top-1 of an ONNX model on ``images`` (ONNX Runtime, CPU), each chunk prepared by ``prepare``."""
    return top1(onnx_outputs(path, images.crops, batch, prepare=prepare), images.labels)


def write_labels(path: Path, names: Sequence[str], separator: str = "\n") -> None:
    """The class names, one per line (or joined by ``separator`` on one line), refusing any a reader would
    split or drop: empty, surrounding spaces, a line break or the separator inside."""
    for name in names:
        if not name or name != name.strip() or "\n" in name or "\r" in name or separator in name:
            raise ConfigError("class name {!r} cannot be written to {} as one label".format(name, path.name))
    atomic_write_text(path, separator.join(names) + "\n")


def write_readme(path: Path, title: str, paragraphs: Sequence[str]) -> None:
    atomic_write_text(path, "# {}\n\n{}\n".format(title, "\n\n".join(p.strip("\n") for p in paragraphs)))
