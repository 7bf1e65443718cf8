"""Benchmark: the INT8 forms of one MobileNetV2 run (CPU: U8S8, U8U8, U8S8 with reduce_range, S8S8;
and the TensorRT form), side by side: agreement with fp32 under the export's accuracy gate (val +
held-out train images), with and without the accuracy-aware fallback (edgetl.export.fallback, run
wherever a form misses the gate), and batch-1 latency on ONNX Runtime, on the machine it runs on (its
ISA is recorded). With ``--emulate-cpu MODEL`` the INT8 outputs of the named forms are also computed
under ``qemu-x86_64 -cpu MODEL`` (e.g. ``Haswell``: AVX2 without VNNI), because ONNX Runtime picks its
integer kernels by CPUID, so an AVX2-only CPU can be checked on a VNNI workstation; a form that misses
the gate there gets its fallback searched with the emulated outputs.

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
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from edgetl.bench.latency import LatencyConfig, bench_latency
from edgetl.contracts.formats import INT8_CPU_FORMS, Int8CpuForm
from edgetl.contracts.preprocess import PreprocessSpec
from edgetl.core.cpu import cpu_isa
from edgetl.core.fileio import atomic_write_text
from edgetl.core.tables import markdown_table
from edgetl.data.demo import ensure_demo_dataset
from edgetl.data.folders import DatasetSplit
from edgetl.diagnostics.machine import machine_info
from edgetl.export.config import DEFAULT_CALIB_SIZE
from edgetl.export.fallback import fall_back, rank_layers
from edgetl.export.gate import judge
from edgetl.export.int8_step import INT8_SIMULATION, RANKING_IMAGES
from edgetl.export.job import ExportConfig, export_run
from edgetl.export.parity import heldout_images, load_eval_images, normalized, onnx_outputs
from edgetl.export.quantize import ImageCalibrationReader, calibration_samples, quantize_onnx
from edgetl.train.config import FinetuneConfig
from edgetl.train.loop import finetune

ROOT = Path(__file__).resolve().parents[1]
THREADS = 2
# From a fresh clone; --emulate-cpu also needs qemu-x86_64 (apt-get install qemu-user)
SETUP = "python3 -m venv .venv && .venv/bin/pip install -c constraints.txt -e '.[train]' && "
FORMS = {
    "U8S8": ("cpu", INT8_CPU_FORMS["vnni"]),
    "U8S8 reduce_range": ("cpu", INT8_CPU_FORMS["avx2"]),
    "U8U8": (
        "cpu",
        Int8CpuForm("uint8", "uint8", False, "onnxruntime's other advice without VNNI: u8 x u8 cannot saturate"),
    ),
    "S8S8": ("cpu", INT8_CPU_FORMS["arm64"]),
    "TensorRT (S8S8 symmetric)": ("trt", INT8_CPU_FORMS["arm64"]),  # the types are the trt form's own
}
EMULATED_FORMS = "U8S8,U8S8 reduce_range,U8U8"
COST_LAYERS = (1, 2, 4, 8)
TRT_WHY = "TensorRT's explicit quantization; judged as float Q/DQ arithmetic, as the export judges it"
MAX_LAYERS = ExportConfig(run="").int8_fallback_max_layers


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


def outputs_of(model: Path, crops: np.ndarray, spec: PreprocessSpec, optimize: bool = True) -> np.ndarray:
    return onnx_outputs(model, crops, None, threads=THREADS, prepare=lambda c: normalized(c, spec), optimize=optimize)


def emulated_outputs(model: Path, crops_file: Path, spec_file: Path, cpu: str, work: Path) -> np.ndarray:
    """``outputs_of`` run by this script under ``qemu-x86_64 -cpu CPU`` (apt-get install qemu-user)."""
    qemu = shutil.which("qemu-x86_64")
    if qemu is None:
        raise SystemExit("--emulate-cpu needs qemu-x86_64 (apt-get install qemu-user)")
    out = work / (model.stem + "-" + cpu + ".npy")
    command = [qemu, "-cpu", cpu, sys.executable, __file__, "--outputs-of", str(model), str(crops_file), str(spec_file)]
    subprocess.run(command + [str(out)], check=True, stderr=subprocess.DEVNULL)
    return np.load(out)


class FormBench:
    """One INT8 form of the fp32 model: its plain model and, where a gate is missed, its fallback search."""

    def __init__(self, name: str, kind: str, types: Int8CpuForm, fp32: Path, reader: Any, work: Path) -> None:
        self.name, self.kind, self.types, self.fp32, self.reader = name, kind, types, fp32, reader
        self.work = work / name.replace(" ", "_")
        self.work.mkdir()
        self.model = self.work / "model_int8.onnx"
        self.quantize(self.model, [])
        self.ranking = None  # type: Any

    def quantize(self, path: Path, keep_fp32: List[str]) -> None:
        quantize_onnx(
            self.fp32, path, self.reader, self.kind, "minmax", self.types, keep_fp32, self.work / "ranges.json"
        )

    def ranked(self) -> Any:
        """The plain model's layers, most sensitive first (ranked once, on first use)."""
        if self.ranking is None:
            self.ranking = rank_layers(self.fp32, self.model, self.reader, RANKING_IMAGES)
        return self.ranking

    def search(self, judge_model: Callable[[Path], Any], where: str) -> Dict[str, Any]:
        """The fallback search with ``judge_model(path)`` as the gate; its passing model stays in the work folder."""
        folder = self.work / where
        folder.mkdir()
        search, passing = fall_back(self.ranked(), self.quantize, judge_model, MAX_LAYERS, folder)
        return dict(search.to_dict(shown=MAX_LAYERS), model=str(passing) if passing else None)


def measure(run: Path, work: Path, emulate: str, emulate_forms: List[str]) -> Dict[str, Any]:
    bundle = work / "bundle"
    export_run(ExportConfig(run=str(run), out=str(bundle), calib_dir=str(work / "calibration")))
    spec = PreprocessSpec.load(bundle / "preprocess.json")
    samples, _ = calibration_samples(run, None, DEFAULT_CALIB_SIZE, 0)
    images = gate_images(run, spec, samples)
    crops_file, spec_file = work / "crops.npy", bundle / "preprocess.json"
    np.save(crops_file, images["crops"])
    fp32_model = bundle / "model.onnx"
    fp32 = outputs_of(fp32_model, images["crops"], spec)
    reader = ImageCalibrationReader(samples, spec, "input", 1)
    rows, models, benches = [], [str(fp32_model)], {}
    for name, (kind, types) in FORMS.items():
        form = benches[name] = FormBench(name, kind, types, fp32_model, reader, work)
        optimize = kind == "cpu"  # the TensorRT form is judged as the export judges it: float Q/DQ

        def native(path: Path) -> Any:
            simulation = cpu_isa() if optimize else INT8_SIMULATION["trt"]
            return judge(fp32, outputs_of(path, images["crops"], spec, optimize), images["val_labels"], 1.0, simulation)

        row = {"form": name, "kind": kind, "why": form.types.why if kind == "cpu" else TRT_WHY}
        row["native"] = native(form.model).to_dict()
        if row["native"]["verdict"] == "failed":
            row["native_fallback"] = form.search(native, "native")
        if emulate and name in emulate_forms:

            def emulated(path: Path) -> Any:
                outputs = emulated_outputs(path, crops_file, spec_file, emulate, form.work)
                return judge(fp32, outputs, images["val_labels"], 1.0, "qemu -cpu " + emulate)

            row["emulated"] = emulated(form.model).to_dict()
            if row["emulated"]["verdict"] == "failed":
                row["emulated_fallback"] = form.search(emulated, "emulated")
        row["model"] = str(form.model)
        if optimize:  # the TensorRT form's latency is the engine's, on the device
            models.append(str(form.model))
            for key in ("native_fallback", "emulated_fallback"):
                if row.get(key, {}).get("model"):
                    models.append(row[key]["model"])
        rows.append(row)
    cost = benches["U8S8"]  # what keeping layers in fp32 costs the fastest form, whether or not a gate needed it
    cost_models = {}
    for count in COST_LAYERS:
        cost_models[count] = cost.work / "kept_{}.onnx".format(count)
        cost.quantize(cost_models[count], [s.node for s in cost.ranked()[:count]])
        models.append(str(cost_models[count]))
    latency = bench_latency(LatencyConfig(models=models, batches=(1,), threads=THREADS, iters=100, rounds=5))
    timed = {r["model"]: r for r in latency["rows"]}
    fp32_row = timed[str(fp32_model)]

    def timing(model: str) -> Dict[str, float]:
        row = timed[model]
        return {"p50_ms": row["p50_ms"], "relative": row["relative"],
                "speedup_vs_fp32": fp32_row["relative"] / row["relative"]}  # fmt: skip

    for row in rows:
        if row["model"] in timed:
            row["latency"] = timing(row["model"])
        for key in ("native_fallback", "emulated_fallback"):
            if row.get(key, {}).get("model") in timed:  # the TensorRT form's are not timed here
                row[key]["latency"] = timing(row[key]["model"])
    fallback_cost = [dict(timing(str(path)), layers=count) for count, path in cost_models.items()]
    return {
        "fallback_cost": {"form": "U8S8", "rows": fallback_cost},
        "machine": machine_info(THREADS),
        "run": str(run), "images": int(len(images["crops"])), "val_images": int(len(images["val_labels"])),
        "fp32_latency": {"p50_ms": fp32_row["p50_ms"], "relative": fp32_row["relative"]},
        "emulated_cpu": emulate or None, "forms": rows, "method": latency["method"],
        "fallback": {"max_layers": MAX_LAYERS, "ranking_images": RANKING_IMAGES},
    }  # fmt: skip


def _gate_cells(gate: Optional[Dict[str, Any]], fallback: Optional[Dict[str, Any]]) -> List[Any]:
    """Disagreements and verdict, then what the fallback did (empty when it was not needed)."""
    if gate is None:
        return ["not run", "", ""]
    if fallback is None:
        return [gate["disagreements"], gate["verdict"], ""]
    attempts = {a["layers"]: a for a in fallback["attempts"]}
    if fallback["status"] != "passed":
        return [gate["disagreements"], gate["verdict"], "failed: up to {} layers".format(fallback["max_layers"])]
    kept = len(fallback["kept_fp32"])
    return [gate["disagreements"], gate["verdict"], "{} layers: {} disagreements, passed".format(
        kept, attempts[kept]["disagreements"])]  # fmt: skip


def _speed(timing: Optional[Dict[str, float]]) -> List[str]:
    if not timing:
        return ["", ""]
    return ["{:.2f}".format(timing["p50_ms"]), "{:.2f}x".format(timing["speedup_vs_fp32"])]


def to_markdown(report: Dict[str, Any], command: str) -> str:
    machine = report["machine"]
    cpu = report["emulated_cpu"]
    lines = [
        "# INT8 forms: accuracy gate, accuracy-aware fallback and latency",
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
        "disagreement with fp32 <= 1 point. Where a form misses it, the fallback keeps the top-ranked layers "
        "(ranked on {} calibration images) in fp32, at most {}.".format(
            report["images"],
            report["val_images"],
            report["fallback"]["ranking_images"],
            report["fallback"]["max_layers"],
        ),  # fmt: skip
        "",
    ]
    headers = ["form", "disagreements (this CPU)", "verdict", "fallback (this CPU)"]
    if cpu:
        headers += ["disagreements ({})".format(cpu), "verdict ({})".format(cpu), "fallback ({})".format(cpu)]
    headers += ["p50 ms (batch 1)", "speed-up vs fp32", "p50 ms with fallback", "speed-up with fallback"]
    table = []
    for row in report["forms"]:
        cells = [row["form"]] + _gate_cells(row["native"], row.get("native_fallback"))
        if cpu:
            cells += _gate_cells(row.get("emulated"), row.get("emulated_fallback"))
        fallback = row.get("native_fallback") or row.get("emulated_fallback") or {}
        if row["kind"] == "trt":
            cells += ["on the device", "", "", ""]
        else:
            cells += _speed(row.get("latency")) + _speed(fallback.get("latency"))
        table.append(cells)
    lines += [markdown_table(headers, table), "", "fp32: p50 {:.2f} ms.".format(report["fp32_latency"]["p50_ms"])]
    lines += [
        "Speed-ups are ratios of reference-relative times measured in one interleaved run, on this machine "
        "(also for models whose fallback was searched under emulation).",
        "",
    ]
    cost = report["fallback_cost"]
    lines += [
        "What the fallback costs {} at batch 1 here: the top-ranked layers kept in fp32, whether or not a gate "
        "needed them.".format(cost["form"]),
        "",
        markdown_table(
            ["layers in fp32", "p50 ms", "speed-up vs fp32"],
            [[r["layers"]] + _speed(r) for r in cost["rows"]],
        ),
        "",
    ]
    lines += ["- {}: {}".format(row["form"], row["why"]) for row in report["forms"]]
    for row in report["forms"]:
        for key, where in (("native_fallback", "this CPU"), ("emulated_fallback", cpu)):
            if row.get(key, {}).get("kept_fp32"):
                lines += ["", "{} fallback on {}, layers kept in fp32: {}".format(
                    row["form"], where, ", ".join(row[key]["kept_fp32"]))]  # fmt: skip
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="a MobileNetV2 run folder (default: train the INT8 test fixture)")
    parser.add_argument("--emulate-cpu", default="", help="qemu CPU model for the emulated column, e.g. Haswell")
    parser.add_argument(
        "--emulate-forms", default=EMULATED_FORMS, help="forms to run under emulation (comma-separated)"
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
        + (" --emulate-forms '{}'".format(args.emulate_forms) if args.emulate_forms != EMULATED_FORMS else "")
    )
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "int8_forms.json", json.dumps(report, indent=2, default=float) + "\n")
    atomic_write_text(args.out / "int8_forms.md", to_markdown(report, command))
    print(to_markdown(report, command))


if __name__ == "__main__":
    main()
