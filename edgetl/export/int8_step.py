"""The INT8 artifact of an export: quantize, judge with the accuracy gate (edgetl.export.gate) and, when the
gate is missed, try the recovery ladder (edgetl.export.recover): re-solve a feature extractor's head on its
INT8 features (judged by edgetl.export.paired_gate), then keep the most quantization-sensitive layers in fp32
(edgetl.export.fallback)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from edgetl.contracts.formats import INT8_CPU_FORMS
from edgetl.export.config import ExportConfig
from edgetl.export.fallback import fall_back, latency_cost, rank_layers
from edgetl.export.gate import GateResult, judge
from edgetl.export.head_resolve import solve_int8_head
from edgetl.export.paired_gate import CRITERION as PAIRED
from edgetl.export.paired_gate import judge_paired
from edgetl.export.parity import EvalImages
from edgetl.export.quantize import ImageCalibrationReader, quantize_onnx
from edgetl.export.recover import Attempt, run_ladder
from edgetl.export.recover_options import recovery_steps
from edgetl.export.torch_to_onnx import finish_onnx

RANKING_IMAGES = 64  # calibration images the fallback ranks layers on (about 10 s for MobileNetV2 on 2 cores)
# how the accuracy gate runs each INT8 form: the CPU form as ONNX Runtime deploys it, the TensorRT
# form as float Q/DQ arithmetic (close to TensorRT, independent of this CPU's integer kernels)
INT8_SIMULATION = {"cpu": "onnxruntime-cpu-kernels", "trt": "onnxruntime-float-qdq (graph optimisations off)"}
DISAGREEMENT = "disagreement with fp32"


def cpu_form_metadata(config: ExportConfig) -> Dict[str, str]:
    """Which CPU the INT8 cpu form was built for, and its types (none for the TensorRT form)."""
    if config.int8_form != "cpu":
        return {}
    return {"int8_cpu_isa": config.int8_cpu_isa, "int8_cpu_form": INT8_CPU_FORMS[config.int8_cpu_isa].name}


@dataclass
class HeadRefit:
    """What the ``head`` recovery step needs: the labelled hold-out (the first ``len(holdout_labels)`` rows of
    the gate's inputs, fixed before the ladder starts, never fitted on) and the images it fits on."""

    holdout_labels: np.ndarray
    fit_images: Callable[[], EvalImages]  # loaded only when the step runs
    num_classes: int
    prepare: Callable[[np.ndarray], np.ndarray]  # uint8 crops -> model input
    holdout: Dict[str, Any] = field(default_factory=dict)  # its record for the report
    not_applicable: Optional[str] = None  # why the step does not apply to this run
    label_smoothing: float = 0.0
    class_weight: Optional[Any] = None  # torch tensor, as finetune's --balance fit


class Int8Step:
    """Writes and judges the INT8 models of one fp32 model; ``sections[path]`` is the report entry of
    the model at ``path``.

    ``outputs(path)`` returns a model's parity section on the val images and its outputs on the
    gate's images (the val images, then the other judged inputs, counted by source in ``inputs``), whose fp32
    outputs are ``reference``. ``work`` is a scratch folder (the calibration ranges, the ladder's attempts)."""

    def __init__(
        self,
        config: ExportConfig,
        fp32_path: Path,
        reader: ImageCalibrationReader,
        metadata: Dict[str, str],
        ir_version: int,
        outputs: Callable[[Path], Tuple[Dict[str, Any], np.ndarray]],
        reference: np.ndarray,
        val_labels: np.ndarray,
        work: Path,
        *,
        inputs: Optional[Dict[str, int]] = None,
        head: Optional[HeadRefit] = None,
    ) -> None:
        self.config, self.fp32_path, self.reader = config, fp32_path, reader
        self.metadata, self.ir_version = metadata, ir_version
        self.outputs, self.reference, self.val_labels, self.work = outputs, reference, val_labels, work
        self.inputs, self.head = inputs, head
        self.sections: Dict[Path, Dict[str, Any]] = {}
        self.last_outputs = reference[:0]
        self.fallback_record: Dict[str, Any] = {"status": "not tried"}

    def quantize(
        self, path: Path, keep_fp32: List[str], source: Optional[Path] = None, extra: Optional[Dict[str, str]] = None
    ) -> None:
        """The INT8 model of ``source`` (default: the fp32 model) with the nodes ``keep_fp32`` in fp32 (recorded
        in its metadata, with ``extra``)."""
        config = self.config
        quantize_onnx(
            source or self.fp32_path, path, self.reader, config.int8_form, config.calib_method,
            INT8_CPU_FORMS[config.int8_cpu_isa], keep_fp32, self.work / "calibration_ranges.json",
        )  # fmt: skip
        metadata = dict(self.metadata, int8_fp32_layers=json.dumps(keep_fp32), **(extra or {}))
        finish_onnx(path, self.ir_version, metadata)

    def evaluate(self, path: Path) -> GateResult:
        section, self.last_outputs = self.outputs(path)
        gate = judge(
            self.reference,
            self.last_outputs,
            self.val_labels,
            self.config.max_int8_drop,
            INT8_SIMULATION[self.config.int8_form],
            self.inputs,
        )
        self.sections[path] = dict(section, accuracy_gate=gate.to_dict(), failures=gate.failures())
        return gate

    def write(self, path: Path) -> None:
        """Quantize and judge; on a missed gate (not an unresolvable one) try the recovery ladder."""
        self.quantize(path, [])
        gate = self.evaluate(path)
        section = self.sections[path]
        steps = recovery_steps(self.config.int8_recover, self.config.int8_fallback)
        if gate.verdict != "failed" or not steps:
            status = "not needed" if gate.verdict == "passed" else "not tried"
            section["fallback"] = {"status": status}
            section["recovery"] = {"status": status, "steps": list(steps)}
            return
        available = {
            "head": lambda deadline: self._head(path),
            "fallback": lambda deadline: self._fallback(path, deadline),
        }
        ladder = run_ladder(steps, available, self.config.int8_recover_budget)
        if ladder.passing_file is not None:
            os.replace(str(ladder.passing_file), str(path))
            section = self.sections.pop(ladder.passing_file)
        else:
            best = ladder.best()
            section["failures"] = (
                section["failures"]
                + [
                    "INT8 recovery ({}) did not pass{}; best step: {}".format(
                        ", ".join(steps),
                        " within --int8-recover-budget {:g} s".format(ladder.budget_s)
                        if ladder.to_dict()["budget_spent"]
                        else "",
                        best.line() if best else "none judged a model",
                    )
                ]
                + self.fallback_record.pop("failures", [])
            )
        section["recovery"] = dict(ladder.to_dict(), without_recovery=gate.to_dict())
        section["fallback"] = self.fallback_record
        self.sections[path] = section

    def _head(self, plain: Path) -> Tuple[Attempt, Optional[Path]]:
        """Re-solve the linear head on the plain INT8 model's features; judged by the paired labelled bound."""
        head = self.head
        if head is None or head.not_applicable:
            return Attempt("head", "not applicable: {}".format(head.not_applicable if head else "no hold-out")), None
        fit = head.fit_images()
        solve, derived = solve_int8_head(
            fp32_path=self.fp32_path, int8_path=plain, out_fp32_path=self.work / "fp32_head.onnx", crops=fit.crops,
            labels=fit.labels, num_classes=head.num_classes, prepare=head.prepare,
            optimize=self.config.int8_form == "cpu", work=self.work, seed=self.config.seed,
            label_smoothing=head.label_smoothing, class_weight=head.class_weight,
        )  # fmt: skip
        candidate = self.work / "int8_head.onnx"
        self.quantize(candidate, [], source=derived, extra={"int8_head_weights_sha256": solve.weights_sha256})
        disagreement = self.evaluate(candidate)
        count = len(head.holdout_labels)
        paired = judge_paired(
            self.reference[:count],
            self.last_outputs[:count],
            head.holdout_labels,
            self.config.max_int8_drop,
            INT8_SIMULATION[self.config.int8_form],
        )
        section = self.sections[candidate]
        section.update(
            paired_gate=paired.to_dict(),
            deciding_gate=PAIRED,
            head_solve=solve.to_dict(),
            labelled_holdout=head.holdout,
            failures=paired.failures(),
        )
        details = {
            "head_solve": solve.to_dict(),
            "paired_gate": paired.to_dict(),
            "disagreement_gate": disagreement.to_dict(),
            "labelled_holdout": head.holdout,
        }
        attempt = Attempt(
            "head", paired.verdict, PAIRED, section.get("val_top1"), paired.upper_bound_points, 0.0, details
        )
        return attempt, candidate if paired.verdict == "passed" else None

    def _fallback(self, plain: Path, deadline: float) -> Tuple[Attempt, Optional[Path]]:
        """Keep the fewest most sensitive layers in fp32 (judged by disagreement with fp32)."""
        ranking = rank_layers(self.fp32_path, plain, self.reader, RANKING_IMAGES // self.reader.batch)
        cap = self.config.int8_fallback_max_layers
        search, passing = fall_back(ranking, self.quantize, self.evaluate, cap, self.work, deadline)
        record = dict(search.to_dict(), without_fallback=self.sections[plain]["accuracy_gate"])
        if passing is None:
            record["failures"] = [
                "INT8 fallback: keeping up to {} of {} ranked layers in fp32 did not pass the gate (raise "
                "--int8-fallback-max-layers, or see the fallback attempts in the report)".format(cap, len(ranking))
            ]
        elif self.config.int8_form == "cpu":  # its cost on ONNX Runtime here; the TensorRT form's is the engine's
            record["latency"] = latency_cost(self.fp32_path, plain, passing)
        self.fallback_record = record
        tried = [self.work / "int8_fallback_{}.onnx".format(a.layers) for a in search.attempts]
        judged = [self.sections[p] for p in tried if p in self.sections]
        chosen = self.sections.get(passing) if passing else None
        if chosen is None and judged:
            chosen = min(judged, key=lambda s: s["accuracy_gate"]["upper_bound_points"])
        details = {"kept_fp32": search.kept_fp32, "attempts": len(search.attempts)}
        if chosen is None:
            return Attempt("fallback", "failed", DISAGREEMENT, details=details), None
        gate = chosen["accuracy_gate"]
        verdict = "passed" if passing else "failed"
        bound = gate["upper_bound_points"]
        return Attempt("fallback", verdict, DISAGREEMENT, chosen.get("val_top1"), bound, 0.0, details), passing
