"""Benchmark: how far the outputs of a real model move under each reduced-precision implementation that
``edgetl verify`` must accept, against the tolerances it applies (``edgetl.runtime.verify.TOLERANCES``, a
fraction of max(1, max |reference|)). Measured on the verification sample the export writes (16 crops) and
on all val images, for the INT8 test fixture's MobileNetV2 run:

- fp32 with TF32: TensorRT's fp32 engines use TF32 tensor-core math by default on Ampere and newer (Jetson
  Orin). Emulated here in torch: every Conv/Linear input and weight rounded to TF32's 10-bit mantissa (round
  to nearest, ties away, as ``cvt.rna.tf32.f32``), fp32 accumulation. All convolutions, depthwise included,
  so this errs on the large side.
- fp16: ``model_fp16.onnx`` (fp16 weights and activations, fp32 inputs/outputs) on ONNX Runtime's CPU.
- int8: the TensorRT Q/DQ form (default calibration, every layer quantised) run with ONNX Runtime's integer
  kernels (graph optimisations on) against its float Q/DQ reference (optimisations off), the reference
  ``edgetl verify`` uses: two implementations of the same quantised model, as TensorRT's fused INT8 kernels
  are a third.

None of these is TensorRT on a GPU; the device check itself runs there. Usage:

    OMP_NUM_THREADS=2 python benchmarks/verify_tolerances.py [--run RUN]
    # writes benchmarks/results/verify_tolerances.{json,md}
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import tempfile
from pathlib import Path
from typing import Any, Dict

import numpy as np

from edgetl.contracts.verify_sample import read_sample
from edgetl.core.deps import require
from edgetl.core.fileio import atomic_write_text
from edgetl.core.tables import markdown_table
from edgetl.data.folders import DatasetSplit
from edgetl.diagnostics.machine import machine_info
from edgetl.export.job import ExportConfig, export_run
from edgetl.export.parity import load_eval_images, normalized, onnx_outputs
from edgetl.export.torch_to_onnx import ExportModule
from edgetl.runtime.verify import TOLERANCES
from edgetl.train.checkpoint import load_run, preprocess_of

ROOT = Path(__file__).resolve().parents[1]
torch = require("torch")


def _int8_forms_benchmark() -> Any:
    """benchmarks/bench_int8_forms.py, loaded from its file: its ``fixture_run`` (the INT8 test fixture's run)."""
    spec = importlib.util.spec_from_file_location("bench_int8_forms", str(ROOT / "benchmarks" / "bench_int8_forms.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tf32(tensor: Any) -> Any:
    """fp32 -> the nearest TF32 value (10 explicit mantissa bits; ties away from zero), still stored as fp32."""
    bits = tensor.detach().contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    bits = (bits + 0x1000) & 0xFFFFE000
    return (bits - ((bits >> 31) << 32)).to(torch.int32).view(torch.float32)


def tf32_outputs(run: Path, inputs: np.ndarray) -> np.ndarray:
    """The run's model (as exported) with TF32 math in every Conv2d and Linear."""
    model, _ = load_run(run)
    module = ExportModule(model, softmax=False).eval()
    for layer in module.modules():
        if isinstance(layer, (torch.nn.Conv2d, torch.nn.Linear)):
            layer.weight.data = tf32(layer.weight.data)
            layer.register_forward_pre_hook(lambda _, args: tuple(tf32(a) for a in args))
    with torch.no_grad():
        return np.concatenate([module(torch.from_numpy(inputs[i : i + 32])).numpy() for i in range(0, len(inputs), 32)])


def deviation(reference: np.ndarray, outputs: np.ndarray) -> Dict[str, Any]:
    scale = max(1.0, float(np.abs(reference).max()))
    return {
        "max_abs_diff": float(np.abs(outputs - reference).max()),
        "relative_to_scale": float(np.abs(outputs - reference).max() / scale),
        "top1_disagreements": int((outputs.argmax(1) != reference.argmax(1)).sum()),
        "images": len(reference),
    }


def measure(run: Path, work: Path) -> Dict[str, Any]:
    spec = preprocess_of(load_run(run)[1])
    int8 = work / "int8"
    # every layer quantised (no fallback) and no gate to pass: the model_int8.onnx is what is measured
    export_run(
        ExportConfig(
            run=str(run), out=str(int8), precision="int8", int8_form="trt", int8_fallback="none", max_int8_drop=100.0,
            gate_images=0, calib_dir=str(work / "calib"),
        )
    )  # fmt: skip
    fp16 = work / "fp16"
    export_run(
        ExportConfig(run=str(run), out=str(fp16), precision="fp16", trt_version="11.x", calib_dir=str(work / "c"))
    )
    sets = {
        "verification sample": read_sample(int8 / "verify_sample.npz").pixels,
        "val images": load_eval_images(DatasetSplit.load(run).val, spec, 500, 0).crops,
    }
    rows: Dict[str, Any] = {}
    for name, crops in sets.items():
        inputs = normalized(crops, spec)
        reference = onnx_outputs(int8 / "model.onnx", crops, None, prepare=lambda c: normalized(c, spec))
        q_float = onnx_outputs(int8 / "model_int8.onnx", inputs, None, optimize=False)
        rows[name] = {
            "fp32 (TF32 math)": deviation(reference, tf32_outputs(run, inputs)),
            "fp16": deviation(reference, onnx_outputs(fp16 / "model_fp16.onnx", inputs, None)),
            "int8": deviation(q_float, onnx_outputs(int8 / "model_int8.onnx", inputs, None, optimize=True)),
        }
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="a run folder (default: train the INT8 test fixture's run)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgetl-tolerances-") as tmp:
        run = args.run or _int8_forms_benchmark().fixture_run(Path(tmp))
        rows = measure(run, Path(tmp))
    precision = {"fp32 (TF32 math)": "fp32", "fp16": "fp16", "int8": "int8"}
    result = {
        "command": "python3 -m venv .venv && .venv/bin/pip install -c constraints.txt -e '.[train]' && "
        "OMP_NUM_THREADS=2 .venv/bin/python benchmarks/verify_tolerances.py",
        "machine": machine_info(2),
        "tolerances": TOLERANCES,
        "rows": rows,
    }
    table = [
        [where, kind, r["images"], r["max_abs_diff"], r["relative_to_scale"], TOLERANCES[precision[kind]],
         r["top1_disagreements"]]
        for where, kinds in rows.items()
        for kind, r in kinds.items()
    ]  # fmt: skip
    header = ["images", "implementation", "n", "max abs diff", "/ max(1, max abs ref)", "tolerance", "top-1 flips"]
    text = "# edgetl verify tolerances\n\n{}\n\n{}\n\nReproduce: `{}`\n".format(
        __doc__.split("\n\n")[1], markdown_table(header, table), result["command"]
    )
    atomic_write_text(ROOT / "benchmarks" / "results" / "verify_tolerances.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(ROOT / "benchmarks" / "results" / "verify_tolerances.md", text)
    print(text)


if __name__ == "__main__":
    main()
