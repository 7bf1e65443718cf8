"""``edgetl bench variants``: which variant should I ship? Train each on the same data, then compare
training cost, accuracy and inference speed side by side.

Variants: the frozen base with the feature cache (``--cache features``) and without it (an image
pipeline), the frozen base cut early at a stage (smaller, faster), partial fine-tuning of the top K
stages, and the full fine-tune. Per variant:
- training: the time of the variant's own step (as ``finetune`` runs it) on a synthetic
  device-resident batch, i.e. compute alone, all variants timed in interleaved rounds;
  epoch time and images/s of the real run (input
  pipeline included, from its metrics.csv); peak memory of the run; best val top-1/top-5;
- inference: parameters, FLOPs at batch 1, and latency/throughput of the exported bundle on every
  backend through ``edgetl.bench.latency`` (all variants in one interleaved run), with the val top-1
  of each artifact as the export measured it.
"""

from __future__ import annotations

import ctypes
import gc
import importlib.util
import json
import logging
import math
import resource
import statistics
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from edgetl.bench.latency import bench_latency
from edgetl.bench.variants_config import CPU_BACKENDS, Variant, VariantsConfig
from edgetl.bench.variants_report import format_markdown, plot_accuracy_latency
from edgetl.contracts.backbones import get_backbone, preprocess_spec
from edgetl.core.deps import require
from edgetl.core.device import DeviceSetup
from edgetl.core.fileio import atomic_write_text
from edgetl.data.feature_cache import HeadBatches
from edgetl.errors import ConfigError
from edgetl.export.job import ExportConfig, export_run
from edgetl.runtime.tensorrt import installed_tensorrt_version
from edgetl.train.checkpoint import load_run
from edgetl.train.config import FinetuneConfig
from edgetl.train.head_fit import epochs_trained
from edgetl.train.loop import finetune
from edgetl.train.model import HeadConfig, build_model, count_parameters
from edgetl.train.throughput import training_step_rate

torch = require("torch")
log = logging.getLogger(__name__)

REPORT_FORMAT = "edgetl-variants-v1"
STEP_ROUNDS = 3
BACKEND_LABELS = {
    "torch": "torch eager",
    "onnx": "ORT fp32",
    "onnx-int8": "ORT int8",
    "trt-fp16": "TensorRT fp16",
    "trt-int8": "TensorRT int8",
}


class PeakMemory:
    """Peak memory inside the block, in MiB: on CUDA the allocator's peak; on CPU the process's peak
    RSS (``VmHWM``, reset through ``/proc/self/clear_refs`` after returning freed heap to the OS), or
    the peak since process start where that reset is unavailable. DataLoader workers are not counted."""

    def __init__(self, device: Any) -> None:
        self.device, self.kind, self.mib, self.before_mib = device, "", 0.0, 0.0

    def __enter__(self) -> "PeakMemory":
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.init()  # the peak-memory counters exist only once CUDA is initialised
            torch.cuda.reset_peak_memory_stats(self.device)
            self.before_mib, self.kind = torch.cuda.memory_allocated(self.device) / 2**20, "cuda max allocated"
            return self
        try:
            ctypes.CDLL(None).malloc_trim(0)
        except (OSError, AttributeError):
            pass  # not glibc
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.kind = "peak RSS"
        except OSError:
            self.kind = "peak RSS since process start"
        self.before_mib = _status_kib("VmRSS") / 1024.0
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self.device.type == "cuda":
            self.mib = torch.cuda.max_memory_allocated(self.device) / 2**20
        elif self.kind == "peak RSS":
            self.mib = _status_kib("VmHWM") / 1024.0
        else:
            self.mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _status_kib(field: str) -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return float(line.split()[1])
    except OSError:
        pass
    return 0.0


def step_timer(
    config: FinetuneConfig, variant: Variant, num_classes: int, setup: DeviceSetup
) -> Callable[[int], float]:
    """A function timing ``n`` of the variant's training steps (images/s) on a synthetic device-resident
    batch (random weights): the whole model, or the head alone on features for ``--cache features``."""
    spec = get_backbone(config.arch, config.cut_at)
    size = preprocess_spec(spec).input_size
    device, memory_format = setup.device, setup.memory_format
    torch.manual_seed(config.seed)
    model = build_model(spec, num_classes, HeadConfig(config.head), config.strategy, config.trainable_stages, None).to(
        device, memory_format=memory_format
    )
    labels = torch.randint(num_classes, (config.batch_size,), device=device)
    if variant.cache == "features":
        features = torch.randn(config.batch_size, model.feature_dim, device=device)
        return lambda n: training_step_rate(
            model, model.head, features, labels, config, setup=setup, steps=n, batches=HeadBatches
        )
    images = torch.randn(config.batch_size, 3, size, size, device=device).contiguous(memory_format=memory_format)
    return lambda n: training_step_rate(model, model, images, labels, config, setup=setup, steps=n)


def step_rates(
    config: VariantsConfig, variants: Sequence[Variant], num_classes: int, setup: DeviceSetup
) -> Dict[str, float]:
    """Median images/s of each variant's training step over ``STEP_ROUNDS`` rounds that visit the variants
    in turn (``config.steps`` timed steps each), so load changes on a shared machine hit all alike."""
    timers = {v.name: step_timer(config.finetune_config(v, Path(".")), v, num_classes, setup) for v in variants}
    rates = {name: [] for name in timers}  # type: Dict[str, List[float]]
    for _ in range(STEP_ROUNDS):
        for name, timer in timers.items():
            rates[name].append(timer(config.steps))
    return {name: statistics.median(values) for name, values in rates.items()}


def train_variant(
    config: VariantsConfig, variant: Variant, folder: Path, device: Any, progress: bool
) -> Dict[str, Any]:
    """Fine-tune one variant into ``folder/run``; the figures of the real run."""
    log.info("training variant %s", variant.name)
    with PeakMemory(device) as memory:
        result = finetune(config.finetune_config(variant, folder / "run"), progress=progress)
    summary, history = result.summary, result.history
    return {
        "run": str(result.run_dir),
        "cache": summary["cache"],
        "epochs": epochs_trained(summary),
        "params_trainable": summary["params_trainable"],
        "steps_per_epoch": math.ceil(summary["num_train"] / config.batch_size),
        "epoch_s": statistics.mean(h["epoch_time_s"] for h in history),
        "images_per_s": statistics.mean(h["images_per_s"] for h in history),
        "run_time_s": summary["run_time_s"],
        "peak_memory_mib": memory.mib,
        "memory_before_mib": memory.before_mib,
        "memory_kind": memory.kind,
        "val_top1": summary["best_val_top1"],
        "val_top5": summary["best_val_top5"],
        "num_train": summary["num_train"],
        "num_val": summary["num_val"],
        "data": summary["dataset"],
        "classes": len(summary["classes"]),
    }


def model_size(run_dir: Path) -> Tuple[int, int]:
    """(parameters, FLOPs of one image) of a run's trained model; FLOPs count a multiply-add as 2."""
    from torch.utils.flop_counter import FlopCounterMode

    model, payload = load_run(run_dir)
    size = payload["preprocess"]["input_size"]
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    return count_parameters(model), int(counter.get_total_flops())


def tensorrt_skip_reason(device: Any) -> Optional[str]:
    """Why TensorRT rows are skipped, or None when a GPU is present and tensorrt is importable."""
    if device.type != "cuda":
        return "TensorRT fp16/int8 skipped: no CUDA device"
    if importlib.util.find_spec("tensorrt") is None:
        return "TensorRT fp16/int8 skipped: tensorrt is not importable"
    return None


def _artifact_top1(report: Dict[str, Any], kind: str) -> float:
    return next(a["val_top1"] for a in report["artifacts"] if a["kind"] == kind)


def export_variant(folder: Path, trt_version: Optional[str]) -> Dict[str, Tuple[Path, float]]:
    """Export a variant's run; ``{backend key: (bundle folder, val top-1 of that artifact)}``. The INT8
    accuracy gate is recorded, not enforced (``max_int8_drop=100``): a variant is compared, not rejected.
    With ``trt_version`` (the installed TensorRT: its ONNX limits and, from 11, its fp16 ONNX) TensorRT
    engines are built from the ONNX of the same precision and take that ONNX's val top-1."""
    run, calib = str(folder / "run"), str(folder / "calibration")
    cpu = export_run(
        ExportConfig(
            run=run, out=str(folder / "bundle"), precision="int8", int8_form="cpu", max_int8_drop=100.0, calib_dir=calib
        )
    )
    bundles = {
        "onnx": (folder / "bundle", _artifact_top1(cpu, "fp32")),
        "onnx-int8": (folder / "bundle", _artifact_top1(cpu, "int8")),
    }
    if trt_version is not None:
        fp16 = export_run(
            ExportConfig(
                run=run,
                out=str(folder / "trt-fp16"),
                precision="fp16",
                trt=True,
                trt_version=trt_version,
                calib_dir=calib,
            )
        )
        kinds = {a["kind"] for a in fp16["artifacts"]}
        bundles["trt-fp16"] = (folder / "trt-fp16", _artifact_top1(fp16, "fp16" if "fp16" in kinds else "fp32"))
        int8 = export_run(
            ExportConfig(
                run=run,
                out=str(folder / "trt-int8"),
                precision="int8",
                int8_form="trt",
                trt=True,
                trt_version=trt_version,
                max_int8_drop=100.0,
                calib_dir=calib,
            )
        )
        bundles["trt-int8"] = (folder / "trt-int8", _artifact_top1(int8, "int8"))
    return bundles


def pareto_front(points: Sequence[Tuple[float, float]]) -> List[int]:
    """Indices of the (latency, accuracy) points no other point beats: none is at least as fast and at
    least as accurate while strictly better in one of the two."""
    front = []
    for i, (latency, accuracy) in enumerate(points):
        if not any(lat <= latency and acc >= accuracy and (lat < latency or acc > accuracy) for lat, acc in points):
            front.append(i)
    return front


def _latency_rows(
    config: VariantsConfig, bundles: Dict[str, Dict[str, Tuple[Path, float]]], with_trt: bool
) -> Tuple[List[Dict[str, Any]], Dict[str, Any]]:
    """One interleaved latency run over every variant's bundle (and one over the TensorRT bundles)."""
    report = bench_latency(config.latency_config([str(b["onnx"][0]) for b in bundles.values()]))
    rows = [dict(r, key=r["backend"]) for r in report["rows"]]
    if with_trt:
        paths = {str(b[key][0]): key for b in bundles.values() for key in ("trt-fp16", "trt-int8")}
        trt = bench_latency(config.latency_config(sorted(paths), ("trt",)))
        rows += [dict(r, key=paths[r["model"]]) for r in trt["rows"]]
        report["skipped"] += trt["skipped"]
    return rows, report


def compare_variants(config: VariantsConfig, progress: bool = True) -> Dict[str, Any]:
    """Train, export and time every variant into ``config.out``; return the report (also written there
    as variants.json, variants.md and variants.png)."""
    out = Path(config.out) if config.out else Path("models") / "variants-{}".format(time.strftime("%Y%m%d-%H%M%S"))
    if out.exists() and any(out.iterdir()):
        raise ConfigError("{} is not empty; choose another --out".format(out))
    setup = DeviceSetup.create(config.device)
    device = setup.device
    variants = config.variants()
    training = {v.name: train_variant(config, v, out / v.name, device, progress) for v in variants}
    log.info("timing the training steps")
    for name, rate in step_rates(config, variants, training["full"]["classes"], setup).items():
        training[name].update(step_ms=1000.0 * config.batch_size / rate, step_images_per_s=rate)
    skip_trt = tensorrt_skip_reason(device)
    if skip_trt:
        log.info("%s", skip_trt)
    bundles = {}
    for variant in variants:
        log.info("exporting variant %s", variant.name)
        bundles[variant.name] = export_variant(out / variant.name, None if skip_trt else installed_tensorrt_version())
    log.info("timing %d variants x %d backends", len(variants), len(CPU_BACKENDS) + (0 if skip_trt else 2))
    rows, latency = _latency_rows(config, bundles, skip_trt is None)
    entries = []
    for variant in variants:
        train = training[variant.name]
        params, flops = model_size(Path(train["run"]))
        accuracy = dict({key: top1 for key, (_, top1) in bundles[variant.name].items()}, torch=train["val_top1"])
        inference = []
        for key in [k for k in BACKEND_LABELS if k in accuracy]:
            timed = [
                r
                for r in rows
                if r["key"] == key and Path(r["model"]) == bundles[variant.name]["onnx" if key == "torch" else key][0]
            ]
            inference.append(
                {
                    "backend": key,
                    "label": BACKEND_LABELS[key],
                    "val_top1": accuracy[key],
                    "latency": {
                        str(r["batch"]): {
                            k: r[k] for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "images_per_s", "relative")
                        }
                        for r in timed
                    },
                }
            )
        entries.append(
            dict(
                asdict(variant),
                training=train,
                params=params,
                flops=flops,
                bundle=str(bundles[variant.name]["onnx"][0]),
                inference=inference,
            )
        )
    report = {
        "format": REPORT_FORMAT,
        "arch": config.arch,
        "device": str(device),
        "out": str(out),
        "data": training[variants[0].name]["data"],
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()},
        "variants": entries,
        "skipped": ([skip_trt] if skip_trt else []) + latency["skipped"],
        "latency_method": latency["method"],
        "machine": latency["machine"],
    }
    report["pareto"] = pareto_points(report)
    write_outputs(report, out)
    return report


def pareto_points(report: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Every (variant, backend) at batch 1 with its p50 latency, val top-1 and Pareto membership."""
    points = [
        {
            "variant": v["name"],
            "backend": i["backend"],
            "label": i["label"],
            "val_top1": i["val_top1"],
            "p50_ms": i["latency"]["1"]["p50_ms"],
        }
        for v in report["variants"]
        for i in v["inference"]
        if "1" in i["latency"]
    ]
    front = set(pareto_front([(p["p50_ms"], p["val_top1"]) for p in points]))
    return [dict(p, pareto=i in front) for i, p in enumerate(points)]


def write_outputs(report: Dict[str, Any], out: Path) -> None:
    """variants.json, variants.md and variants.png (accuracy vs batch-1 latency, Pareto front marked)."""
    atomic_write_text(out / "variants.json", json.dumps(report, indent=2) + "\n")
    atomic_write_text(out / "variants.md", format_markdown(report) + "\n")
    plot_accuracy_latency(
        report["pareto"], out / "variants.png", "{}: val top-1 vs batch-1 p50 latency".format(report["arch"])
    )
