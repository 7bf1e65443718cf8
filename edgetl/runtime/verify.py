"""``edgetl verify``: run a bundle's ONNX models (ONNX Runtime) and TensorRT engines on its verification sample
and compare them with the reference outputs ONNX Runtime computed at export. Torch-free, Python 3.8.

A model or engine passes when its top-1 equals the reference's on every image and its largest |difference|
stays within ``TOLERANCES[precision] x max(1, max |reference|)`` (one rule for logits and probabilities).
The sample's sha256 (in ``bundle.json``) and each ONNX model's sha256 are checked first; engines are checked
against their sidecars by the TensorRT runner. A model or ``--for`` folder made from another checkpoint than the
bundle's (``edgetl.contracts.lineage``) fails too: it would be served as if it were the bundle's model.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from edgetl.contracts.bundle import CHECKPOINT, MANIFEST, ONNX_FILES, Bundle, ModelInfo
from edgetl.contracts.lineage import foreign_artifacts, reference_checkpoint
from edgetl.contracts.preprocess import normalize
from edgetl.contracts.verify_sample import VerificationSample, read_sample, reference_scale
from edgetl.core.deps import require
from edgetl.core.fileio import sha256_file
from edgetl.core.tables import text_table
from edgetl.errors import CheckpointError, ConfigError, DependencyError, GateError
from edgetl.runtime.base import Runner, infer_batched
from edgetl.runtime.onnxrt import OnnxRuntimeRunner
from edgetl.runtime.tensorrt import TrtRunner

log = logging.getLogger(__name__)

# Largest |difference| to the reference allowed, as a fraction of max(1, max |reference|). fp32: ONNX Runtime
# on another CPU or provider, and TensorRT's fp32 engines, which use TF32 for convolutions and matrix products
# by default on Ampere and newer (Jetson Orin): 10-bit mantissas. fp16: TensorRT's fp16 kernels (and
# model_fp16.onnx). int8: TensorRT's fused INT8 kernels vs the float Q/DQ reference (and the CPU form's
# integer kernels on another instruction set). Measured on the demo run without a GPU (TF32 emulated, fp16 and
# INT8 on ONNX Runtime; benchmarks/results/verify_tolerances.md): at most 0.002, 0.007 and 0.25 of the scale.
TOLERANCES = {"fp32": 0.02, "fp16": 0.05, "int8": 0.4}
PRECISION_OF_KIND = {"fp32": "fp32", "baked": "fp32", "fp16": "fp16", "int8": "int8"}
PASSED, FAILED, NOT_RUN = "passed", "failed", "not run"


class VerificationError(GateError):
    """A model or engine disagrees with its reference, or the sample or a model changed after export (exit 3)."""


@dataclass
class Check:
    """One model or engine on the sample."""

    file: str
    backend: str
    precision: str
    status: str  # passed | failed | not run
    detail: str
    top1_agreements: int = 0
    images: int = 0
    max_abs_diff: Optional[float] = None
    tolerance: Optional[float] = None


@dataclass
class VerifyReport:
    bundle: str
    sample: str
    images: int
    checks: List[Check]

    @property
    def failures(self) -> List[str]:
        return ["{}: {}".format(c.file, c.detail) for c in self.checks if c.status == FAILED]

    def to_dict(self) -> Dict[str, Any]:
        return dict(asdict(self), status=FAILED if self.failures else PASSED)


def ort_graph_optimizations(model: ModelInfo) -> bool:
    """How ONNX Runtime runs a bundle model, at export and here: the TensorRT INT8 form as float Q/DQ
    arithmetic (optimisations off: close to TensorRT, independent of this CPU), everything else as deployed."""
    return model.int8_form != "trt"


def load_sample(bundle: Bundle) -> VerificationSample:
    """The bundle's sample after its sha256 check (CheckpointError when the bundle has none)."""
    entry = bundle.verification()
    if entry is None:
        raise CheckpointError(
            "{} has no verification sample (bundle.json lists none); re-export it with this edgetl".format(bundle.root)
        )
    path = bundle.root / entry["file"]
    if not path.is_file():
        raise VerificationError("{}: the verification sample {} is missing".format(bundle.root, entry["file"]))
    if sha256_file(path) != entry["sha256"]:
        raise VerificationError(
            "{}: {} changed after export (its sha256 differs from bundle.json)".format(bundle.root, entry["file"])
        )
    sample = read_sample(path)
    wrong = [k for k, out in sample.references.items() if out.shape[1] != len(bundle.labels)]
    if wrong:
        raise VerificationError(
            "{}: the sample's {} outputs have {} classes, labels.txt has {}".format(
                bundle.root, wrong[0], sample.references[wrong[0]].shape[1], len(bundle.labels)
            )
        )
    return sample


@dataclass(frozen=True)
class _Target:
    file: str
    backend: str
    precision: str
    kind: str  # the ONNX kind whose reference applies (an engine: the ONNX it was built from)
    make_runner: Optional[Callable[[], Runner]]
    batch: Optional[int]
    layout: str
    problem: str = ""  # why it cannot run or must fail before running


def _targets(bundle: Bundle) -> List[_Target]:
    targets = []
    for kind in ONNX_FILES:
        info = bundle.model(kind)
        if info is None:
            continue
        path = bundle.root / info.file
        problem = (
            "" if sha256_file(path) == info.sha256 else "changed after export (its sha256 differs from bundle.json)"
        )
        optimize = ort_graph_optimizations(info)
        backend = "onnxruntime (CPU{})".format("" if optimize else ", graph optimisations off")
        targets.append(
            _Target(
                info.file,
                backend,
                PRECISION_OF_KIND[kind],
                kind,
                _ort_factory(path, optimize),
                info.batch,
                info.input_layout,
                problem,
            )
        )
    kinds = {f: k for k, f in ONNX_FILES.items()}
    trt_problem = _tensorrt_problem() if bundle.engines() else ""
    for engine in bundle.engines():
        plan = bundle.engine_plan(engine) or {}
        kind = kinds.get(plan.get("onnx", ""), "fp32")
        factory = None if trt_problem else _trt_factory(bundle.root / engine, bundle.root / ONNX_FILES[kind])
        targets.append(
            _Target(engine, "tensorrt", plan.get("precision", "fp32"), kind, factory, None, "NCHW", trt_problem)
        )
    return targets


def _tensorrt_problem() -> str:
    """Why TensorRT engines cannot run here ("" when tensorrt imports)."""
    try:
        require("tensorrt")
    except DependencyError as exc:
        return str(exc)
    return ""


def _ort_factory(path: Path, optimize: bool) -> Callable[[], Runner]:
    return lambda: OnnxRuntimeRunner(path, optimize=optimize)


def _trt_factory(engine: Path, source: Path) -> Callable[[], Runner]:
    return lambda: TrtRunner(engine, onnx_path=source)


def verify_bundle(root: Path, only: Sequence[str] = ()) -> VerifyReport:
    """Run every model and engine of the bundle at ``root`` (or the files in ``only``) on its sample.

    Files in ``only`` must exist in the bundle (ConfigError) and be runnable here (DependencyError). Models and
    engines that fail are reported, not raised: see ``raise_on_failure``."""
    if not (Path(root) / MANIFEST).is_file() and (Path(root) / CHECKPOINT).is_file():
        raise CheckpointError(
            f"{root} is a run folder, not an exported bundle (it has no {MANIFEST}): verify the folder it was "
            f"exported to, or export it first with 'edgetl export {root}'"
        )
    bundle = Bundle.load(Path(root))
    targets = _targets(bundle)
    if only:
        unknown = sorted(set(only) - {t.file for t in targets})
        if unknown:
            raise ConfigError(
                "{} has no model or engine {} (it has: {})".format(
                    bundle.root, ", ".join(unknown), ", ".join(t.file for t in targets) or "none"
                )
            )
        targets = [t for t in targets if t.file in only]
        missing = [t for t in targets if t.make_runner is None]
        if missing:
            raise DependencyError("cannot verify {}: {}".format(missing[0].file, missing[0].problem))
    sample = load_sample(bundle)
    entry = bundle.verification() or {}
    checks = [_check(bundle, sample, target) for target in targets]
    if not only:
        checks += lineage_checks(bundle)
    return VerifyReport(str(bundle.root), entry.get("file", ""), len(sample.pixels), checks)


def lineage_checks(bundle: Bundle) -> List[Check]:
    """A failed check for each artifact made from another checkpoint than the bundle's."""
    checkpoint = str(reference_checkpoint(bundle.root, bundle.manifest))[:12]
    hint = bundle.reexport_hint() + ", which removes it"
    return [
        Check(name, "lineage", "", FAILED, f"made from checkpoint {sha[:12]}, the bundle from {checkpoint}; {hint}")
        for name, sha in sorted(foreign_artifacts(bundle.root, bundle.manifest).items())
    ]


def _check(bundle: Bundle, sample: VerificationSample, target: _Target) -> Check:
    check = Check(target.file, target.backend, target.precision, FAILED, target.problem)
    if target.make_runner is None:
        check.status = NOT_RUN
        return check
    if target.problem:
        return check
    reference = sample.references.get(target.kind)
    if reference is None:
        check.detail = "the sample holds no reference outputs of {}".format(ONNX_FILES[target.kind])
        return check
    inputs = sample.pixels
    if target.layout == "NCHW":
        inputs = np.stack([normalize(pixels, bundle.preprocess) for pixels in sample.pixels])
    try:
        with target.make_runner() as runner:
            name = next(iter(runner.input_metadata()))
            outputs: np.ndarray = infer_batched(runner, name, inputs, target.batch).astype(np.float64)
    except DependencyError as exc:  # no usable GPU for TensorRT here
        check.status, check.detail = NOT_RUN, str(exc)
        return check
    except CheckpointError as exc:  # refused to load: its sidecar or file does not match
        check.detail = str(exc)
        return check
    return judge(
        check,
        reference.astype(np.float64),
        outputs,
        TOLERANCES[target.precision] * reference_scale(sample, target.kind),
    )


def judge(check: Check, reference: np.ndarray, outputs: np.ndarray, tolerance: float) -> Check:
    """Fill ``check`` from the outputs: passed when every top-1 agrees and max |difference| <= tolerance."""
    if outputs.shape != reference.shape:
        check.detail = "outputs have shape {}, the reference {}".format(outputs.shape, reference.shape)
        return check
    agree = int((outputs.argmax(1) == reference.argmax(1)).sum())
    diff = float(np.abs(outputs - reference).max())
    check.top1_agreements, check.images, check.max_abs_diff, check.tolerance = agree, len(reference), diff, tolerance
    problems = []
    if agree < len(reference):
        problems.append(
            "top-1 differs from the reference on {} of {} images".format(len(reference) - agree, len(reference))
        )
    if not diff <= tolerance:  # also catches NaN
        problems.append("max |difference| {:.3g} > {:.3g} ({} tolerance)".format(diff, tolerance, check.precision))
    check.status = FAILED if problems else PASSED
    check.detail = "; ".join(problems) or "top-1 agrees on {} of {}, max |difference| {:.3g} <= {:.3g}".format(
        agree, len(reference), diff, tolerance
    )
    return check


def raise_on_failure(report: VerifyReport, note: str = "") -> None:
    """VerificationError (one line, exit 3) when any model or engine failed; ``note`` is appended."""
    if report.failures:
        raise VerificationError(
            "verification of {} failed: {}{}".format(report.bundle, "; ".join(report.failures), note)
        )


def format_report(report: VerifyReport) -> str:
    rows = [
        [c.file, c.backend, c.precision, c.status, "{}/{}".format(c.top1_agreements, c.images) if c.images else "",
         "" if c.max_abs_diff is None else "{:.3g}".format(c.max_abs_diff),
         "" if c.tolerance is None else "{:.3g}".format(c.tolerance)]
        for c in report.checks
    ]  # fmt: skip
    lines = ["{}: {} images ({}, sha256 matches bundle.json)".format(report.bundle, report.images, report.sample)]
    lines.append(text_table(["file", "backend", "precision", "status", "top-1", "max|diff|", "tolerance"], rows))
    lines += ["{}: not run: {}".format(c.file, c.detail) for c in report.checks if c.status == NOT_RUN]
    return "\n".join(lines)
