"""Throughput primitives shared by ``edgetl bench data`` and the GPU self-check: images/s of an input
pipeline, and of one training step per strategy on device-resident synthetic input."""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, List

from edgetl.contracts.backbones import get_backbone, preprocess_spec
from edgetl.core.deps import require
from edgetl.core.device import DeviceSetup
from edgetl.data.feature_cache import HeadBatches, extract_features
from edgetl.train.config import STRATEGIES, FinetuneConfig
from edgetl.train.model import HeadConfig, build_model
from edgetl.train.step import TrainStep, cosine_with_warmup, optimizer_for, train_one_epoch

torch = require("torch")

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
