"""``edgetl doctor --gpu-selfcheck``: every CUDA path of edgetl on small real inputs (the built-in demo dataset),
each checked against its CPU twin, written as Markdown + JSON. Workstation side (imports torch).

Honest by construction: the report is the list of :class:`CheckResult` the check functions return. A check
that cannot run raises :class:`Skip` with the reason (no CUDA device, one GPU only, no TensorRT, no
pretrained weights offline), an exception inside a check is reported as ``failed`` with its message, and a
check whose figures miss their target fails with the target named. No figure is written that was not
measured in this run.
"""

from __future__ import annotations

import copy
import importlib.util
import math
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from edgetl.contracts.backbones import get_backbone, preprocess_spec
from edgetl.contracts.bundle import Bundle
from edgetl.contracts.preprocess import torch_transforms
from edgetl.core.deps import require
from edgetl.core.device import DeviceSetup
from edgetl.data.decoded_cache import open_decoded_images
from edgetl.data.demo import ensure_demo_dataset
from edgetl.data.folders import DatasetSplit, load_dataset
from edgetl.data.pipelines import image_pipeline
from edgetl.diagnostics.machine import machine_info
from edgetl.diagnostics.selfcheck_report import (
    Outcome,
    Report,
    Skip,
    run_checks,
    write_report,
)  # fmt: skip
from edgetl.errors import EdgetlError
from edgetl.export.gate import upper_bound
from edgetl.export.job import ExportConfig, export_run
from edgetl.runtime.onnxrt import OnnxRuntimeRunner
from edgetl.runtime.tensorrt import TrtRunner
from edgetl.train.config import FinetuneConfig
from edgetl.train.evaluate import evaluate_run
from edgetl.train.loop import finetune, resume
from edgetl.train.model import HeadConfig, build_model
from edgetl.train.throughput import pipeline_rate, training_rates
from edgetl.train.weights import fetch_weights

torch = require("torch")

ARCH = "mobilenet_v2"
DEMO_COUNTS = {"train_per_class": 24, "val_per_class": 8}
BATCH = 16
TOP1_TOLERANCE = 0.15  # CUDA vs CPU twin on 32 val images after 2 tiny epochs: AMP and kernels differ
LOSS_TOLERANCE = 0.10  # relative, AMP+channels_last vs fp32 NCHW over the same steps from the same weights


@dataclass
class Context:
    """Where checks run and what they may use; ``need_*`` raise Skip with the reason."""

    work: Path
    cuda: bool
    gpus: int
    cache: Dict[str, Any] = field(default_factory=dict)

    @classmethod
    def detect(cls, work: Path) -> "Context":
        available = bool(torch.cuda.is_available())
        return cls(Path(work), available, torch.cuda.device_count() if available else 0)

    def need_cuda(self) -> None:
        if not self.cuda:
            raise Skip("skipped: no CUDA device (torch.cuda.is_available() is False)")

    def need_gpus(self, count: int) -> None:
        self.need_cuda()
        if self.gpus < count:
            raise Skip("needs more than one GPU (this machine has {})".format(self.gpus))

    def need_module(self, module: str, why: str) -> None:
        if importlib.util.find_spec(module) is None:
            raise Skip("{} is not importable: {}".format(module, why))

    def weights(self, arch: str = ARCH) -> Path:
        """The pretrained weights via the project's cache (offline copy included); Skip when unavailable."""
        try:
            return fetch_weights(get_backbone(arch))
        except (EdgetlError, OSError) as exc:
            raise Skip("needs the pretrained {} weights, which are not available offline: {}".format(arch, exc))

    def demo(self) -> Path:
        if "demo" not in self.cache:
            self.cache["demo"] = ensure_demo_dataset(self.work / "demo", **DEMO_COUNTS)
        return self.cache["demo"]


Check = Tuple[str, Callable[[Context], Outcome]]


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _finetune_twin(ctx: Context, cache: str, device: str) -> Dict[str, Any]:
    out = ctx.work / "runs" / "{}-{}".format(cache, device)
    config = FinetuneConfig(
        data=str(ctx.demo()),
        arch=ARCH,
        epochs=1,
        warmup_epochs=0,
        batch_size=BATCH,
        device=device,
        amp=None if device == "cuda" else False,
        cache=cache,
        workers=2,
        out=str(out),
    )
    tick = time.perf_counter()
    first = finetune(config, progress=False)
    resumed = resume(first.run_dir, epochs=2, progress=False)
    seconds = time.perf_counter() - tick
    evaluation = evaluate_run(resumed.run_dir, device=device, workers=0)
    return {
        "run": resumed.run_dir,
        "epochs": len(resumed.history),
        "val_top1": resumed.history[-1]["val_top1"],
        "eval_top1": evaluation["top1"],
        "train_s": seconds,
    }


def check_finetune(cache: str) -> Callable[[Context], Outcome]:
    def run(ctx: Context) -> Outcome:
        ctx.need_cuda()
        ctx.weights()
        gpu, cpu = _finetune_twin(ctx, cache, "cuda"), _finetune_twin(ctx, cache, "cpu")
        # the same checkpoint evaluated on the CPU: CUDA inference vs its CPU twin, image for image
        cross = evaluate_run(gpu["run"], device="cpu", workers=0)["top1"]
        outcome = Outcome(
            {
                "cuda_val_top1": gpu["val_top1"],
                "cpu_val_top1": cpu["val_top1"],
                "cuda_eval_top1": gpu["eval_top1"],
                "same_checkpoint_on_cpu_top1": cross,
                "epochs_after_resume": gpu["epochs"],
                "cuda_train_s": round(gpu["train_s"], 2),
                "cpu_train_s": round(cpu["train_s"], 2),
            }
        )
        outcome.expect(gpu["epochs"] == 2, "resume continues to epoch 2")
        outcome.expect(abs(gpu["val_top1"] - cpu["val_top1"]) <= TOP1_TOLERANCE, "val top-1 within 15 points of CPU")
        outcome.expect(abs(gpu["eval_top1"] - cross) <= 1.0 / 32 + 1e-9, "evaluate on CUDA = on CPU (+-1 image)")
        return outcome

    return run


def _steps(
    model: Any, images: Any, labels: Any, steps: int, amp: bool, channels_last: bool
) -> Tuple[List[float], float]:
    """Losses of ``steps`` SGD steps on one batch and the median step time (ms), after 2 warm-up steps."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to("cuda", memory_format=fmt).train()
    images = images.to("cuda").contiguous(memory_format=fmt)
    labels = labels.to("cuda")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    losses, times = [], []
    for step in range(steps + 2):
        _sync()
        tick = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
            loss = torch.nn.functional.cross_entropy(model(images), labels)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        _sync()
        if step >= 2:
            times.append((time.perf_counter() - tick) * 1000)
            losses.append(float(loss))
    return losses, statistics.median(times)


def check_amp(ctx: Context) -> Outcome:
    ctx.need_cuda()
    outcome = Outcome({})
    for arch in ("mobilenet_v2", "resnet50"):
        spec = get_backbone(arch)
        size = preprocess_spec(spec).input_size
        torch.manual_seed(0)
        model = build_model(spec, 4, HeadConfig("linear"), "full", 1, None)  # random init: speed is the same
        images, labels = torch.randn(32, 3, size, size), torch.randint(4, (32,))
        fp32_loss, fp32_ms = _steps(copy.deepcopy(model), images, labels, 10, False, False)
        amp_loss, amp_ms = _steps(copy.deepcopy(model), images, labels, 10, True, True)
        gap = max(abs(a - b) / max(abs(b), 1e-6) for a, b in zip(amp_loss, fp32_loss))
        outcome.figures[arch] = {
            "fp32_nchw_step_ms": round(fp32_ms, 3),
            "amp_channels_last_step_ms": round(amp_ms, 3),
            "speedup": round(fp32_ms / amp_ms, 2),
            "max_relative_loss_gap": round(gap, 4),
        }
        outcome.expect(gap <= LOSS_TOLERANCE, "{}: AMP loss curve within 10% of fp32".format(arch))
        outcome.expect(fp32_ms / amp_ms >= 2.0, "{}: AMP+channels_last >= 2x fp32 NCHW (full fine-tune)".format(arch))
    return outcome


def check_nvjpeg(ctx: Context) -> Outcome:
    ctx.need_cuda()
    split = load_dataset(ctx.demo())
    spec = preprocess_spec(get_backbone(ARCH))
    timings, caches = {}, {}
    for name, device in (("pil", None), ("nvjpeg", torch.device("cuda"))):
        tick = time.perf_counter()
        caches[name] = open_decoded_images(split.train, spec, split.root, "train", ctx.work / name, 0, device)
        timings[name] = time.perf_counter() - tick
    diff = (caches["nvjpeg"].pixels.to(torch.int16) - caches["pil"].pixels.to(torch.int16)).abs()
    within = float((diff <= 1).float().mean())
    outcome = Outcome(
        {
            "images": len(split.train),
            "pixels_within_1_level": round(within, 5),
            "max_level_difference": int(diff.max()),
            "pil_build_s": round(timings["pil"], 3),
            "nvjpeg_build_s": round(timings["nvjpeg"], 3),
            "build_speedup": round(timings["pil"] / timings["nvjpeg"], 2),
        }
    )
    outcome.expect(within >= 0.99, "nvjpeg within 1 level of PIL for >= 99% of pixels")
    return outcome


def _first_batch(pipeline: Any) -> Tuple[Any, Any]:
    for images, labels in pipeline.train_batches(0):
        return images.float().cpu(), labels.cpu()
    raise RuntimeError("the pipeline gave no batch")


def check_device_crops(ctx: Context) -> Outcome:
    ctx.need_cuda()
    split = load_dataset(ctx.demo())
    spec = preprocess_spec(get_backbone(ARCH))
    gpu = image_pipeline(
        "ram", split, spec, batch_size=BATCH, workers=0, setup=DeviceSetup.create("cuda"), cache_dir=ctx.work / "gpu"
    )
    cpu_setup = DeviceSetup(torch.device("cpu"), False, False)
    cpu = image_pipeline("ram", split, spec, batch_size=BATCH, workers=0, setup=cpu_setup, cache_dir=ctx.work / "cpu")
    (gpu_images, gpu_labels), (cpu_images, cpu_labels) = _first_batch(gpu), _first_batch(cpu)
    diff = (gpu_images - cpu_images).abs()
    outcome = Outcome(
        {"batch": list(gpu_images.shape), "mean_abs_diff": float(diff.mean()), "max_abs_diff": float(diff.max())}
    )
    outcome.expect(bool(torch.equal(gpu_labels, cpu_labels)), "same labels for the same seed")
    outcome.expect(float(diff.mean()) <= 0.02, "device crops = CPU crops (mean |diff| <= 0.02 normalised)")
    return outcome


def _stall(pipeline: Any, model: Any, optimizer: Any, setup: DeviceSetup) -> float:
    """Fraction of an epoch spent waiting for the next batch (the step itself synchronised)."""
    waiting, tick = 0.0, time.perf_counter()
    batches = iter(pipeline.train_batches(1))
    while True:
        wait = time.perf_counter()
        try:
            images, labels = next(batches)
        except StopIteration:
            break
        _sync()
        waiting += time.perf_counter() - wait
        with torch.autocast("cuda", dtype=torch.float16, enabled=setup.use_amp):
            loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        _sync()
    return waiting / (time.perf_counter() - tick)


def check_stall(ctx: Context) -> Outcome:
    ctx.need_cuda()
    split = load_dataset(ctx.demo())
    spec = get_backbone(ARCH)
    setup = DeviceSetup.create("cuda")
    stalls = {}
    for cache in ("none", "ram"):
        pipeline = image_pipeline(
            cache, split, preprocess_spec(spec), batch_size=BATCH, workers=2, setup=setup, cache_dir=ctx.work / "stall"
        )
        model = build_model(spec, len(split.classes), HeadConfig("linear"), "full", 1, None)
        model = model.to(setup.device, memory_format=setup.memory_format)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        _stall(pipeline, model, optimizer, setup)  # warm-up epoch (workers, cudnn autotuning)
        stalls[cache] = round(_stall(pipeline, model, optimizer, setup), 4)
    outcome = Outcome({"stall_fraction": stalls, "note": "--cache features trains the head only: no image loading"})
    outcome.expect(min(stalls.values()) <= 0.05, "data stall <= 5% with the best --cache")
    return outcome


def check_cache_vs_imagefolder(ctx: Context) -> Outcome:
    ctx.need_cuda()
    datasets = require("torchvision.datasets")
    root = ctx.demo()
    split = load_dataset(root)
    spec = preprocess_spec(get_backbone(ARCH))
    setup = DeviceSetup.create("cuda")
    plain = torch.utils.data.DataLoader(
        datasets.ImageFolder(str(root / "train"), transform=torch_transforms(spec, train=True)),
        batch_size=BATCH,
        shuffle=True,
        num_workers=2,
        pin_memory=True,
    )

    class ToDevice:
        def train_batches(self, epoch: int) -> Any:
            return ((x.to("cuda", non_blocking=True), y.to("cuda", non_blocking=True)) for x, y in plain)

    cached = image_pipeline("ram", split, spec, batch_size=BATCH, workers=2, setup=setup, cache_dir=ctx.work / "cmp")
    rates = {"plain ImageFolder+PIL": pipeline_rate(ToDevice(), 10, setup.device)}
    rates["decoded cache (--cache ram)"] = pipeline_rate(cached, 10, setup.device)
    ratio = rates["decoded cache (--cache ram)"] / rates["plain ImageFolder+PIL"]
    outcome = Outcome({"images_per_s": {k: round(v, 1) for k, v in rates.items()}, "speedup": round(ratio, 2)})
    outcome.expect(ratio >= 5.0, "decoded cache >= 5x plain ImageFolder+PIL on the GPU")
    return outcome


def check_frozen_vs_full(ctx: Context) -> Outcome:
    ctx.need_cuda()
    rows = training_rates(ARCH, 4, batch_size=32, setup=DeviceSetup.create("cuda"), steps=10)
    rates = {row["name"]: row["images_per_s"] for row in rows}
    ratio = rates["feature-extractor"] / rates["full"]
    outcome = Outcome({"images_per_s": {k: round(v, 1) for k, v in rates.items()}, "frozen_over_full": round(ratio, 2)})
    outcome.expect(ratio >= 2.5, "frozen-base step >= 2.5x faster than full")
    return outcome


def _latency_ms(runner: Any, feed: Dict[str, np.ndarray], iters: int = 50) -> float:
    for _ in range(5):
        runner.infer(feed)
    times = []
    for _ in range(iters):
        tick = time.perf_counter()
        runner.infer(feed)
        times.append((time.perf_counter() - tick) * 1000)
    return statistics.median(times)


VAL_IMAGES = 32  # the export's parity/accuracy images: the demo's whole val split
INT8_TOLERATED = 2  # disagreements with fp32 the self-check's INT8 gate lets through (its drop is set from this)


def _run(ctx: Context) -> Path:
    """The tiny demo run the export checks share, trained once per self-check."""
    if "run" not in ctx.cache:
        config = FinetuneConfig(
            data=str(ctx.demo()), arch=ARCH, epochs=1, warmup_epochs=0, batch_size=BATCH, workers=2,
            out=str(ctx.work / "runs" / "export"),
        )  # fmt: skip
        ctx.cache["run"] = finetune(config, progress=False).run_dir
    return Path(ctx.cache["run"])


def _exported(ctx: Context, **options: Any) -> Tuple[Path, Dict[str, Any]]:
    """The tiny demo run exported with ``options``."""
    run = _run(ctx)
    out = ctx.work / "bundles" / ("-".join(sorted(options)) or "plain")
    report = export_run(ExportConfig(run=str(run), out=str(out), val_images=VAL_IMAGES, **options))
    return out, report


def int8_selfcheck_options(train_images: int, val_images: int) -> Dict[str, Any]:
    """Export options whose INT8 gate the demo's few images can resolve: half the training images calibrate,
    the other half join the val images in the gate, and ``--max-int8-drop`` is the 95% bound of
    ``INT8_TOLERATED`` disagreements on that sample (rounded up to 0.1 point). The default 1-point gate needs
    299 images; this one checks that the INT8 path runs end to end, not that INT8 is accurate."""
    calib = max(1, train_images // 2)
    judged = val_images + train_images - calib
    drop = math.ceil(upper_bound(min(INT8_TOLERATED, judged - 1), judged) * 1000) / 10
    return {
        "precision": "int8",
        "int8_form": "trt",
        "calib_size": calib,
        "max_int8_drop": drop,
        "gate_images": judged - val_images,
    }


def engine_source_onnx(bundle: Path, engine: str) -> Path:
    """The ONNX an engine was built from, as its plan in ``bundle.json`` records it (model_int8.onnx for a
    Q/DQ INT8 engine, model_fp16.onnx for fp16 on strongly typed TensorRT): the runner checks the engine's
    sidecar against that file's sha256."""
    plan = Bundle.load(bundle).engine_plan(engine)
    if plan is None:
        raise EdgetlError("{} plans no engine {} (bundle.json)".format(bundle, engine))
    return bundle / plan["onnx"]


def check_ort_cuda(ctx: Context) -> Outcome:
    ctx.need_cuda()
    ctx.weights()
    bundle, _ = _exported(ctx)
    feed = {"input": np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)}
    with OnnxRuntimeRunner(bundle / "model.onnx", device="cuda") as gpu, OnnxRuntimeRunner(
        bundle / "model.onnx"
    ) as cpu:
        provider = gpu.session.get_providers()[0]
        if provider != "CUDAExecutionProvider":
            raise RuntimeError("the CUDA provider did not start: the session runs on " + provider)
        difference = float(np.abs(gpu.infer(feed)["logits"] - cpu.infer(feed)["logits"]).max())
        figures = {
            "cuda_batch1_ms": round(_latency_ms(gpu, feed), 3),
            "cpu_batch1_ms": round(_latency_ms(cpu, feed), 3),
        }
    figures["max_abs_logit_diff_vs_cpu"] = difference
    outcome = Outcome(figures)
    outcome.expect(difference <= 1e-2, "CUDA provider logits = CPU provider logits (|diff| <= 1e-2)")
    return outcome


def check_tensorrt(ctx: Context) -> Outcome:
    ctx.need_cuda()
    ctx.need_module("tensorrt", "install TensorRT (pip install 'edgetl[trt]') to build and time engines")
    ctx.need_module("cuda", "the trt backend needs cuda-python (pip install 'edgetl[trt]')")
    ctx.weights()
    import tensorrt

    outcome = Outcome({"tensorrt": tensorrt.__version__})
    feed = {"input": np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)}
    split = DatasetSplit.load(_run(ctx))
    val_images = min(VAL_IMAGES, len(split.val))
    int8 = int8_selfcheck_options(len(split.train), val_images)
    for precision, options in (("fp16", {"precision": "fp16"}), ("int8", int8)):
        tick = time.perf_counter()
        bundle, report = _exported(ctx, trt=True, trt_version=tensorrt.__version__, **options)
        engine = report.get("engine") or {}
        figures = {"export_and_build_s": round(time.perf_counter() - tick, 1), "engine": engine}
        if precision == "int8":
            figures["int8_gate"] = (
                "plumbing, not accuracy: --max-int8-drop {} on the demo's {} images (up to {} disagreements "
                "with fp32), which only checks that the INT8 path runs end to end".format(
                    int8["max_int8_drop"], val_images + int8["gate_images"], INT8_TOLERATED
                )
            )
        outcome.expect(engine.get("status") == "built", "{} engine built".format(precision))
        if engine.get("status") == "built":
            with TrtRunner(bundle / engine["file"], engine_source_onnx(bundle, engine["file"])) as runner:
                figures["batch1_ms"] = round(_latency_ms(runner, feed), 3)
        outcome.figures[precision] = figures
    return outcome


def check_multi_gpu(ctx: Context) -> Outcome:
    """Every GPU gives cuda:0's result: one step of the same model on the same batch per device."""
    ctx.need_gpus(2)
    spec = get_backbone(ARCH)
    torch.manual_seed(0)
    model = build_model(spec, 4, HeadConfig("linear"), "full", 1, None).eval()
    images = torch.randn(8, 3, 224, 224)
    outputs = []
    for index in range(ctx.gpus):
        with torch.no_grad():
            outputs.append(copy.deepcopy(model).to("cuda:{}".format(index))(images.to("cuda:{}".format(index))).cpu())
    gap = max(float((out - outputs[0]).abs().max()) for out in outputs)
    outcome = Outcome({"gpus": ctx.gpus, "max_abs_diff_vs_cuda0": gap})
    outcome.expect(gap <= 1e-3, "every GPU matches cuda:0")
    return outcome


CHECKS: List[Check] = [
    ("finetune + resume + evaluate on CUDA, --cache none", check_finetune("none")),
    ("finetune + resume + evaluate on CUDA, --cache ram", check_finetune("ram")),
    ("finetune + resume + evaluate on CUDA, --cache features", check_finetune("features")),
    ("AMP + channels_last vs fp32 NCHW (MobileNetV2, ResNet-50 full)", check_amp),
    ("nvjpeg-decoded cache vs PIL-decoded", check_nvjpeg),
    ("device-side batch crops vs CPU crops (same seed)", check_device_crops),
    ("data-loading stall per --cache", check_stall),
    ("decoded cache vs plain ImageFolder+PIL on the GPU", check_cache_vs_imagefolder),
    ("frozen vs full training step", check_frozen_vs_full),
    ("ONNX Runtime CUDA provider: exported model", check_ort_cuda),
    ("TensorRT: engine build, on-device verification, fp16/int8 latency", check_tensorrt),
    ("multi-GPU: every GPU matches cuda:0", check_multi_gpu),
]


def run_selfcheck(
    out: Path,
    command: str = "edgetl doctor --gpu-selfcheck",
    checks: Optional[Sequence[Check]] = None,
    ctx: Optional[Context] = None,
    name: str = "gpu_selfcheck",
) -> Report:
    """Run the checks (scratch files under ``out/work``) and write ``out/<name>.md`` and ``.json``."""
    out = Path(out)
    ctx = ctx or Context.detect(out / "work")
    results = run_checks(CHECKS if checks is None else checks, ctx)
    machine = machine_info(None)
    if ctx.cuda:
        machine["gpu"] = "{} x {}".format(ctx.gpus, torch.cuda.get_device_name(0))
    machine["processor"] = machine.get("processor") or platform.processor()
    report = Report(results, machine, command, out / (name + ".md"), out / (name + ".json"), DEMO_COUNTS)
    write_report(report)
    return report
