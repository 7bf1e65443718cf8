"""``edgetl bench data``: is training input-bound, and which ``--cache`` fixes it?

Side by side on one dataset and device:
- each image pipeline's throughput: images/s of finished batches on the training device, after a
  warm-up batch (worker start-up), cycling epochs; one-off setup (building the decoded cache) apart;
- the model's own training throughput per strategy on synthetic device-resident input, through
  the same step as ``finetune`` (``train_one_epoch``), plus the head-only step on cached features
  and the forward-only rate at which the feature cache is filled.
A strategy is input-bound when the fastest pipeline delivers fewer images/s than its step takes.
On CPU, loader and model share the cores: the rates are measured apart, a real epoch is slower.
"""

from __future__ import annotations

import gc
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from edgetl.contracts.backbones import get_backbone, preprocess_spec
from edgetl.core.deps import require
from edgetl.core.device import DeviceSetup, resolve_workers
from edgetl.core.tables import text_table
from edgetl.data.demo import ensure_demo_dataset
from edgetl.data.folders import DatasetSplit, load_dataset
from edgetl.data.pipelines import image_pipeline
from edgetl.diagnostics.machine import machine_info
from edgetl.train.config import STRATEGIES
from edgetl.train.throughput import EXTRACTION, HEAD_ONLY, pipeline_rate, training_rates

torch = require("torch")

IMAGE_PIPELINES = ("none", "ram")


def measure_pipelines(
    split: DatasetSplit,
    arch: str,
    *,
    batch_size: int,
    workers: int,
    setup: DeviceSetup,
    batches: int,
    cache_dir: Optional[Path] = None,
) -> List[Dict[str, Any]]:
    """Throughput and setup time of each image pipeline (``IMAGE_PIPELINES``) on ``split.train``."""
    spec = preprocess_spec(get_backbone(arch))
    rows = []
    for name in IMAGE_PIPELINES:
        tick = time.perf_counter()
        pipeline = image_pipeline(
            name, split, spec, batch_size=batch_size, workers=workers, setup=setup, cache_dir=cache_dir
        )
        ready = time.perf_counter() - tick
        rows.append({"name": name, "images_per_s": pipeline_rate(pipeline, batches, setup.device), "setup_s": ready})
        del pipeline
        gc.collect()  # shut the persistent workers down before the next measurement
    return rows


def verdicts(pipelines: List[Dict[str, Any]], model: List[Dict[str, Any]], train_images: int) -> List[Dict[str, Any]]:
    """Per strategy: input- or compute-bound, and the recommended ``--cache``."""
    best = max(pipelines, key=lambda row: row["images_per_s"])
    loader = best["images_per_s"]
    rates = {row["name"]: row["images_per_s"] for row in model}
    out = []
    for strategy in STRATEGIES:
        takes = rates[strategy]
        bound = "input" if loader < takes else "compute"
        if bound == "input":
            text = "input-bound: loader gives {:.0f} img/s (--cache {}), model takes {:.0f}".format(
                loader, best["name"], takes
            )
        else:
            text = "compute-bound: model takes {:.0f} img/s, loader gives {:.0f} (--cache {})".format(
                takes, loader, best["name"]
            )
        recommended = "--cache {}".format(best["name"])
        if strategy == "feature-extractor":
            extract_s = train_images / min(loader, rates[EXTRACTION])
            text += (
                "; with --cache features each epoch trains the head alone at {:.0f} img/s after a one-off "
                "~{:.0f} s feature extraction".format(rates[HEAD_ONLY], extract_s)
            )
            recommended = "--cache features"
        elif bound == "input":
            text += "; still short with the fastest pipeline: more cores/--workers, or a GPU for the batch crops"
        out.append(
            {
                "strategy": strategy,
                "bound": bound,
                "loader": best["name"],
                "loader_images_per_s": loader,
                "model_images_per_s": takes,
                "verdict": text,
                "recommended": recommended,
            }
        )
    return out


def bench_data(
    data: Optional[Path] = None,
    arch: str = "mobilenet_v2",
    batch_size: int = 32,
    workers: Optional[int] = None,
    device: str = "auto",
    batches: int = 20,
    steps: int = 5,
    val_split: Optional[float] = None,
    cache_dir: Optional[Path] = None,
) -> Dict[str, Any]:
    """Measure the input pipelines and the model's training throughput on DATA; return the report."""
    if data is None:
        data = ensure_demo_dataset()
    split = load_dataset(Path(data), val_split)
    setup = DeviceSetup.create(device)
    workers = resolve_workers(workers)
    pipelines = measure_pipelines(
        split, arch, batch_size=batch_size, workers=workers, setup=setup, batches=batches, cache_dir=cache_dir
    )
    model = training_rates(arch, len(split.classes), batch_size=batch_size, setup=setup, steps=steps)
    return {
        "data": str(split.root),
        "arch": arch,
        "device": str(setup.device),
        "batch_size": batch_size,
        "workers": workers,
        "train_images": len(split.train),
        "pipelines": pipelines,
        "model": model,
        "verdicts": verdicts(pipelines, model, len(split.train)),
        "machine": dict(
            machine_info(None), cuda=torch.cuda.get_device_name(setup.device) if setup.device.type == "cuda" else None
        ),
    }


def format_bench_data(report: Dict[str, Any]) -> str:
    """The report as terminal tables plus one verdict line per strategy."""
    lines = [
        "{} train images from {}, {} on {}, batch {}, {} workers".format(
            report["train_images"],
            report["data"],
            report["arch"],
            report["device"],
            report["batch_size"],
            report["workers"],
        ),
        "",
        "input pipelines (finished batches on the device):",
    ]
    lines.append(
        text_table(
            ["--cache", "images/s", "setup s"],
            [[r["name"], r["images_per_s"], r["setup_s"]] for r in report["pipelines"]],
        )
    )
    lines += ["", "model training step on synthetic device-resident input:"]
    lines.append(
        text_table(
            ["strategy", "images/s", "step ms"], [[r["name"], r["images_per_s"], r["step_ms"]] for r in report["model"]]
        )
    )
    lines.append("")
    lines += [
        "{}: {} -> recommended {}".format(v["strategy"], v["verdict"], v["recommended"]) for v in report["verdicts"]
    ]
    return "\n".join(lines)
