"""The INT8 artifact of an export: quantize, judge with the accuracy gate (edgetl.export.gate) and,
when the gate is missed under ``--int8-fallback auto``, keep the most quantization-sensitive layers
in fp32 until it passes (edgetl.export.fallback)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import numpy as np

from edgetl.export.config import ExportConfig
from edgetl.export.fallback import fall_back, latency_cost, rank_layers
from edgetl.export.gate import GateResult, judge
from edgetl.export.quantize import ImageCalibrationReader, quantize_onnx
from edgetl.export.torch_to_onnx import finish_onnx
from edgetl.spec.formats import INT8_CPU_FORMS

RANKING_IMAGES = 64  # calibration images the fallback ranks layers on (about 10 s for MobileNetV2 on 2 cores)
# how the accuracy gate runs each INT8 form: the CPU form as ONNX Runtime deploys it, the TensorRT
# form as float Q/DQ arithmetic (close to TensorRT, independent of this CPU's integer kernels)
INT8_SIMULATION = {"cpu": "onnxruntime-cpu-kernels", "trt": "onnxruntime-float-qdq (graph optimisations off)"}


def cpu_form_metadata(config: ExportConfig) -> Dict[str, str]:
    """Which CPU the INT8 cpu form was built for, and its types (none for the TensorRT form)."""
    if config.int8_form != "cpu":
        return {}
    return {"int8_cpu_isa": config.int8_cpu_isa, "int8_cpu_form": INT8_CPU_FORMS[config.int8_cpu_isa].name}


class Int8Step:
    """Writes and judges the INT8 models of one fp32 model; ``sections[path]`` is the report entry of
    the model at ``path``.

    ``outputs(path)`` returns a model's parity section on the val images and its outputs on the
    gate's images (the val images, then the held-out training images), whose fp32 outputs are
    ``reference``. ``work`` is a scratch folder (the calibration ranges, the fallback's attempts)."""

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
    ) -> None:
        self.config, self.fp32_path, self.reader = config, fp32_path, reader
        self.metadata, self.ir_version = metadata, ir_version
        self.outputs, self.reference, self.val_labels, self.work = outputs, reference, val_labels, work
        self.sections: Dict[Path, Dict[str, Any]] = {}

    def quantize(self, path: Path, keep_fp32: List[str]) -> None:
        """The INT8 model with the nodes ``keep_fp32`` in fp32 (recorded in its metadata)."""
        config = self.config
        quantize_onnx(
            self.fp32_path, path, self.reader, config.int8_form, config.calib_method,
            INT8_CPU_FORMS[config.int8_cpu_isa], keep_fp32, self.work / "calibration_ranges.json",
        )  # fmt: skip
        finish_onnx(path, self.ir_version, dict(self.metadata, int8_fp32_layers=json.dumps(keep_fp32)))

    def evaluate(self, path: Path) -> GateResult:
        section, outputs = self.outputs(path)
        gate = judge(
            self.reference,
            outputs,
            self.val_labels,
            self.config.max_int8_drop,
            INT8_SIMULATION[self.config.int8_form],
        )
        self.sections[path] = dict(section, accuracy_gate=gate.to_dict(), failures=gate.failures())
        return gate

    def write(self, path: Path) -> None:
        """Quantize and judge; on a missed gate (not an unresolvable one) fall back layer by layer."""
        self.quantize(path, [])
        gate = self.evaluate(path)
        section = self.sections[path]
        if gate.verdict != "failed" or self.config.int8_fallback == "none":
            section["fallback"] = {"status": "not needed" if gate.verdict == "passed" else "not tried"}
            return
        ranking = rank_layers(self.fp32_path, path, self.reader, RANKING_IMAGES // self.reader.batch)
        cap = self.config.int8_fallback_max_layers
        search, passing = fall_back(ranking, self.quantize, self.evaluate, cap, self.work)
        fallback = dict(search.to_dict(), without_fallback=section["accuracy_gate"])
        if passing is None:
            section["failures"] = section["failures"] + [
                "INT8 fallback: keeping up to {} of {} ranked layers in fp32 did not pass the gate (raise "
                "--int8-fallback-max-layers, or see the fallback attempts in the report)".format(cap, len(ranking))
            ]
        else:
            if self.config.int8_form == "cpu":  # its cost on ONNX Runtime here; the TensorRT form's is the engine's
                fallback["latency"] = latency_cost(self.fp32_path, path, passing)
            os.replace(str(passing), str(path))
            section = self.sections.pop(passing)
        section["fallback"] = fallback
        self.sections[path] = section
