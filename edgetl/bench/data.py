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
from typing import Any, Callable, Dict, List, Optional

from edgetl.bench.machine import machine_info
from edgetl.core.deps import require
from edgetl.core.device import DeviceSetup, resolve_workers
from edgetl.core.tables import text_table
from edgetl.data.demo import ensure_demo_dataset
from edgetl.data.feature_cache import HeadBatches, extract_features
from edgetl.data.folders import DatasetSplit, load_dataset
from edgetl.data.pipelines import image_pipeline
from edgetl.spec.backbones import get_backbone, preprocess_spec
from edgetl.train.config import STRATEGIES, FinetuneConfig
from edgetl.train.model import HeadConfig, build_model
from edgetl.train.step import TrainStep, cosine_with_warmup, optimizer_for, train_one_epoch

torch = require("torch")

IMAGE_PIPELINES = ("none", "ram")
HEAD_ONLY = "feature-extractor, head only (--cache features)"
EXTRACTION = "feature extraction (frozen base, forward only)"


def _sync(device: Any) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def pipeline_rate(pipeline: Any, batches: int, device: Any) -> float:
    """Images/s of ``pipeline.train_batches`` over ``batches`` batches after a warm-up batch."""
    seen, measured, epoch, started = 0, 0, 0, None
    while measured < batches:
        for _, labels in pipeline.train_batches(epoch):
            if started is None:  # the first batch pays for starting the workers
                _sync(device)
                started = time.perf_counter()
                continue
            seen, measured = seen + len(labels), measured + 1
            if measured == batches:
                break
        epoch += 1
    _sync(device)
    return seen / (time.perf_counter() - started)


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


def training_step_rate(
    model: Any,
    module: Any,
    inputs: Any,
    labels: Any,
    config: FinetuneConfig,
    *,
    setup: DeviceSetup,
    steps: int,
    batches: Callable[[List[Any]], Any] = list,
) -> float:
    """Images/s of ``steps`` training steps of ``module`` (``model`` or its head) through ``train_one_epoch``
    on one device-resident batch, after a warm-up step; ``model`` gives the optimizer's parameter groups."""
    optimizer = optimizer_for(config, model)
    step = TrainStep(
        module,
        torch.nn.CrossEntropyLoss(),
        optimizer,
        cosine_with_warmup(optimizer, 0, steps + 2),
        torch.amp.GradScaler(setup.device.type, enabled=setup.use_amp),
        setup,
    )
    train_one_epoch(step, batches([(inputs, labels)]), progress=False, label="warm-up")
    _sync(setup.device)
    tick = time.perf_counter()
    train_one_epoch(step, batches([(inputs, labels)] * steps), progress=False, label="timed")
    _sync(setup.device)
    return steps * len(labels) / (time.perf_counter() - tick)


def training_rates(
    arch: str, num_classes: int, *, batch_size: int, setup: DeviceSetup, steps: int
) -> List[Dict[str, Any]]:
    """Images/s of one training step per strategy on synthetic input already on the device.

    Random weights (nothing to download; the speed is the same). The head-only step is fed like
    ``--cache features`` feeds it (``HeadBatches``: one intra-op thread on CPU).
    """
    spec = get_backbone(arch)
    size = preprocess_spec(spec).input_size
    device = setup.device
    images = torch.randn(batch_size, 3, size, size, device=device).contiguous(memory_format=setup.memory_format)
    labels = torch.randint(num_classes, (batch_size,), device=device)
    rows = []
    for strategy in STRATEGIES:
        config = FinetuneConfig(arch=arch, strategy=strategy, batch_size=batch_size, weights="none")
        torch.manual_seed(0)
        model = build_model(spec, num_classes, HeadConfig(config.head), strategy, config.trainable_stages, None).to(
            device, memory_format=setup.memory_format
        )
        rows.append(
            {
                "name": strategy,
                "images_per_s": training_step_rate(model, model, images, labels, config, setup=setup, steps=steps),
            }
        )
        if strategy == "feature-extractor":
            features = torch.randn(batch_size, model.feature_dim, device=device)
            rows.append(
                {
                    "name": HEAD_ONLY,
                    "images_per_s": training_step_rate(
                        model, model.head, features, labels, config, setup=setup, steps=steps, batches=HeadBatches
                    ),
                }
            )
            extract_features(model.base, [(images, labels)], setup)  # warm-up
            _sync(device)
            tick = time.perf_counter()
            extract_features(model.base, [(images, labels)] * steps, setup)
            _sync(device)
            rows.append({"name": EXTRACTION, "images_per_s": steps * batch_size / (time.perf_counter() - tick)})
        del model
    for row in rows:
        row["step_ms"] = 1000.0 * batch_size / row["images_per_s"]
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
