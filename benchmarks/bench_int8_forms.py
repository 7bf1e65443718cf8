"""Benchmark: the INT8 CPU forms (U8S8, U8U8, U8S8 with reduce_range, S8S8) of one MobileNetV2 run,
side by side: agreement with fp32 under the export's accuracy gate (val + held-out train images) and
batch-1 latency on ONNX Runtime, on the machine it runs on (its ISA is recorded). With
``--emulate-cpu MODEL`` the INT8 outputs of the named forms are also computed under
``qemu-x86_64 -cpu MODEL`` (e.g. ``Haswell``: AVX2 without VNNI), because ONNX Runtime picks its
integer kernels by CPUID, so an AVX2-only CPU can be checked on a VNNI workstation.

    OMP_NUM_THREADS=2 python benchmarks/bench_int8_forms.py [--run RUN] [--emulate-cpu Haswell]
    # writes benchmarks/results/int8_forms.{json,md}

Without ``--run`` it trains the INT8 test fixture's run (the pretrained MobileNetV2 feature extractor
on 150 train / 50 val demo images per class, 30 head epochs, label smoothing 0.1) in a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

from edgetl.bench.latency import LatencyConfig, bench_latency
from edgetl.bench.machine import machine_info
from edgetl.core.cpu import cpu_isa
from edgetl.core.fileio import atomic_write_text
from edgetl.core.tables import markdown_table
from edgetl.data.demo import ensure_demo_dataset
from edgetl.data.folders import DatasetSplit
from edgetl.export.config import DEFAULT_CALIB_SIZE
from edgetl.export.gate import judge
from edgetl.export.job import ExportConfig, export_run
from edgetl.export.parity import heldout_images, load_eval_images, normalized, onnx_outputs
from edgetl.export.quantize import ImageCalibrationReader, calibration_samples, quantize_onnx
from edgetl.spec.formats import INT8_CPU_FORMS, Int8CpuForm
from edgetl.spec.preprocess import PreprocessSpec
from edgetl.train.config import FinetuneConfig
from edgetl.train.loop import finetune

ROOT = Path(__file__).resolve().parents[1]
THREADS = 2
# From a fresh clone; --emulate-cpu also needs qemu-x86_64 (apt-get install qemu-user)
SETUP = "python3 -m venv .venv && .venv/bin/pip install -c constraints.txt -e '.[train]' && "
FORMS = {
    "U8S8": INT8_CPU_FORMS["vnni"],
    "U8S8 reduce_range": INT8_CPU_FORMS["avx2"],
    "U8U8": Int8CpuForm("uint8", "uint8", False, "onnxruntime's other advice without VNNI: u8 x u8 cannot saturate"),
    "S8S8": INT8_CPU_FORMS["arm64"],
}


def fixture_run(root: Path) -> Path:
    """The INT8 test fixture's run (tests/conftest.py ``demo_mobilenet_v2_run``)."""
    data = ensure_demo_dataset(root / "demo", train_per_class=150, val_per_class=50)
    config = FinetuneConfig(
        data=str(data), arch="mobilenet_v2", strategy="feature-extractor", epochs=30, warmup_epochs=0, lr=0.002,
        label_smoothing=0.1, batch_size=32, workers=0, out=str(root / "run"),
    )  # fmt: skip
    return finetune(config, progress=False).run_dir


def gate_images(run: Path, spec: PreprocessSpec, calibration: List[Any]) -> Dict[str, Any]:
    """The images the export's gate judges with its defaults: the val images, then the held-out training images."""
    split, config = DatasetSplit.load(run), ExportConfig(run=str(run))
    val = load_eval_images(split.val, spec, config.val_images, config.seed)
    heldout = heldout_images(split.train, calibration, spec, config.gate_images, config.seed)
    return {"crops": np.concatenate([val.crops, heldout.crops]), "val_labels": val.labels}


def outputs_of(model: Path, crops: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    return onnx_outputs(model, crops, None, threads=THREADS, prepare=lambda c: normalized(c, spec))


def emulated_outputs(model: Path, crops_file: Path, spec_file: Path, cpu: str, work: Path) -> np.ndarray:
    """``outputs_of`` run by this script under ``qemu-x86_64 -cpu CPU`` (apt-get install qemu-user)."""
    qemu = shutil.which("qemu-x86_64")
    if qemu is None:
        raise SystemExit("--emulate-cpu needs qemu-x86_64 (apt-get install qemu-user)")
    out = work / (model.stem + "-" + cpu + ".npy")
    command = [qemu, "-cpu", cpu, sys.executable, __file__, "--outputs-of", str(model), str(crops_file), str(spec_file)]
    subprocess.run(command + [str(out)], check=True, stderr=subprocess.DEVNULL)
    return np.load(out)


def measure(run: Path, work: Path, emulate: str, emulate_forms: List[str]) -> Dict[str, Any]:
    bundle = work / "bundle"
    export_run(ExportConfig(run=str(run), out=str(bundle), calib_dir=str(work / "calibration")))
    spec = PreprocessSpec.load(bundle / "preprocess.json")
    samples, _ = calibration_samples(run, None, DEFAULT_CALIB_SIZE, 0)
    images = gate_images(run, spec, samples)
    crops_file, spec_file = work / "crops.npy", bundle / "preprocess.json"
    np.save(crops_file, images["crops"])
    fp32 = outputs_of(bundle / "model.onnx", images["crops"], spec)
    rows, models = [], [str(bundle / "model.onnx")]
    for name, form in FORMS.items():
        path = work / "model_int8_{}.onnx".format(name.replace(" ", "_"))
        reader = ImageCalibrationReader(samples, spec, "input", 1)
        quantize_onnx(bundle / "model.onnx", path, reader, "cpu", "minmax", form)
        models.append(str(path))
        native = judge(fp32, outputs_of(path, images["crops"], spec), images["val_labels"], 1.0, cpu_isa())
        row = {"form": name, "why": form.why, "model": str(path), "native": native.to_dict()}
        if emulate and name in emulate_forms:
            emulated = emulated_outputs(path, crops_file, spec_file, emulate, work)
            row["emulated"] = judge(fp32, emulated, images["val_labels"], 1.0, "qemu -cpu " + emulate).to_dict()
        rows.append(row)
    latency = bench_latency(LatencyConfig(models=models, batches=(1,), threads=THREADS, iters=100, rounds=5))
    relative = {Path(r["model"]).name: r for r in latency["rows"]}
    fp32_row = relative["model.onnx"]
    for row in rows:
        timing = relative[Path(row["model"]).name]
        row["latency"] = {"p50_ms": timing["p50_ms"], "relative": timing["relative"],
                          "speedup_vs_fp32": fp32_row["relative"] / timing["relative"]}  # fmt: skip
    return {
        "machine": machine_info(THREADS),
        "run": str(run), "images": int(len(images["crops"])), "val_images": int(len(images["val_labels"])),
        "fp32_latency": {"p50_ms": fp32_row["p50_ms"], "relative": fp32_row["relative"]},
        "emulated_cpu": emulate or None, "forms": rows, "method": latency["method"],
        "fallback": "not measured: accuracy-aware layer fallback is not implemented yet",
    }  # fmt: skip


def to_markdown(report: Dict[str, Any], command: str) -> str:
    machine = report["machine"]
    lines = [
        "# INT8 CPU forms: accuracy gate and latency",
        "",
        "Reproduce: `{}`".format(command),
        "",
        "Machine: {} ({} cores, ISA `{}`, flags {}), {} ORT threads; onnxruntime {}.".format(
            machine["processor"] or machine["machine"],
            machine["cpu_count"],
            machine["cpu_isa"],
            ", ".join(machine["cpu_isa_flags"]),
            THREADS,
            machine["packages"].get("onnxruntime-gpu") or machine["packages"].get("onnxruntime"),
        ),  # fmt: skip
        "The gate judges {} images ({} val + held-out train); a pass needs the 95% upper bound of the top-1 "
        "disagreement with fp32 <= 1 point.".format(report["images"], report["val_images"]),
        "",
    ]
    headers = ["form", "disagreements (this CPU)", "bound, points", "verdict", "p50 ms (batch 1)", "speed-up vs fp32"]
    if report["emulated_cpu"]:
        cpu = report["emulated_cpu"]
        headers[4:4] = ["disagreements ({})".format(cpu), "verdict ({})".format(cpu)]
    table = []
    for row in report["forms"]:
        native, timing = row["native"], row["latency"]
        cells = [row["form"], native["disagreements"], "{:.2f}".format(native["upper_bound_points"]), native["verdict"]]
        if report["emulated_cpu"]:
            emulated = row.get("emulated")
            cells += [emulated["disagreements"], emulated["verdict"]] if emulated else ["not run", ""]
        cells += ["{:.2f}".format(timing["p50_ms"]), "{:.2f}x".format(timing["speedup_vs_fp32"])]
        table.append(cells)
    lines += [markdown_table(headers, table), "", "fp32: p50 {:.2f} ms.".format(report["fp32_latency"]["p50_ms"])]
    lines += ["Speed-ups are ratios of reference-relative times measured in one interleaved run.", ""]
    lines += ["- {}: {}".format(row["form"], row["why"]) for row in report["forms"]]
    lines += ["", "Fallback: " + report["fallback"], ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="a MobileNetV2 run folder (default: train the INT8 test fixture)")
    parser.add_argument("--emulate-cpu", default="", help="qemu CPU model for the emulated column, e.g. Haswell")
    parser.add_argument(
        "--emulate-forms", default="U8S8,U8S8 reduce_range,U8U8", help="forms to run under emulation (comma-separated)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--outputs-of", nargs=4, metavar=("MODEL", "CROPS", "SPEC", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.outputs_of:  # the child process run under qemu
        model, crops, spec, out = (Path(p) for p in args.outputs_of)
        np.save(out, outputs_of(model, np.load(crops), PreprocessSpec.load(spec)))
        return
    with tempfile.TemporaryDirectory(prefix="edgetl-int8-forms-") as tmp:
        work = Path(tmp)
        run = args.run or fixture_run(work)
        report = measure(run, work, args.emulate_cpu, args.emulate_forms.split(","))
    command = (
        SETUP
        + "OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_int8_forms.py"
        + (" --emulate-cpu " + args.emulate_cpu if args.emulate_cpu else "")
    )
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "int8_forms.json", json.dumps(report, indent=2, default=float) + "\n")
    atomic_write_text(args.out / "int8_forms.md", to_markdown(report, command))
    print(to_markdown(report, command))


if __name__ == "__main__":
    main()
