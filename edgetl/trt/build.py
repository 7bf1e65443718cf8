"""Build a TensorRT engine from a bundle's ONNX with the TensorRT Python API (torch-free).

Decisions (flags, profile, which ONNX) come from ``plan`` for the TensorRT version that is
*running*; this module only carries them out: parser errors name the failing node, the
workspace pool and timing cache are applied, a progress line is logged during long builds,
and engine + sidecar are written atomically. Python 3.8 syntax.

``python -m edgetl.trt.build --sidecar model_fp16.engine`` (run in the bundle folder) writes
the sidecar of an engine that ``build_engine.sh`` built with trtexec.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import threading
import time
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

from edgetl.contracts.bundle import (
    ONNX_FILES,
    REJECTED_SUFFIX,
    Bundle,
    engine_file,
    read_manifest,
    sidecar_file,
    write_manifest,
)
from edgetl.contracts.lineage import derive
from edgetl.core.deps import require
from edgetl.core.fileio import atomic_write_bytes, atomic_write_text, sha256_file
from edgetl.errors import CheckpointError, ConfigError, EdgetlError, ExportError
from edgetl.runtime.tensorrt import cuda_runtime, device_info
from edgetl.runtime.verify import NOT_RUN, PASSED, VerifyReport, raise_on_failure, verify_bundle
from edgetl.trt.calibration_cache import stamped, tensorrt_version_number
from edgetl.trt.plan import (
    DEFAULT_WORKSPACE_MIB,
    BatchProfile,
    EnginePlan,
    batch_profile,
    describe_parser_error,
    make_sidecar,
    plan_engine,
    resolve_trt_release,
)

log = logging.getLogger(__name__)
HEARTBEAT_S = 15.0


def _make_logger(trt: Any) -> Any:
    """A trt.ILogger that forwards to ``logging`` and keeps the errors (defined here: tensorrt is lazy)."""
    severity = trt.ILogger.Severity

    class Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: List[str] = []

        def log(self, level: Any, msg: str) -> None:
            if level in (severity.INTERNAL_ERROR, severity.ERROR):
                self.errors.append(msg)
                log.error("TensorRT: %s", msg)
            elif level == severity.WARNING:
                log.warning("TensorRT: %s", msg)
            else:
                log.debug("TensorRT: %s", msg)

    return Logger()


def _make_progress_monitor(trt: Any) -> Any:
    """A trt.IProgressMonitor logging each top-level build phase (TensorRT >= 10)."""

    class Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)

        def phase_start(self, phase_name: str, parent_phase: Optional[str], num_steps: int) -> None:
            if parent_phase is None:
                log.info("TensorRT build: %s (%d steps)", phase_name, num_steps)

        def step_complete(self, phase_name: str, step: int) -> bool:
            return True  # False would cancel the build

        def phase_finish(self, phase_name: str) -> None:
            pass

    return Monitor()


def _make_cache_calibrator(trt: Any, cache: bytes) -> Any:
    """An IInt8EntropyCalibrator2 that only hands TensorRT the calibration cache (it has every scale, so
    TensorRT asks for no batch); defined here because tensorrt is imported lazily."""

    class CacheCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names: List[str]) -> None:
            return None  # no calibration data: the scales come from the cache

        def read_calibration_cache(self) -> bytes:
            return cache

        def write_calibration_cache(self, data: Any) -> None:
            pass

    return CacheCalibrator()


class _Heartbeat:
    """Logs 'still building' every ``interval`` seconds where TensorRT has no progress monitor."""

    def __init__(self, label: str, interval: float = HEARTBEAT_S) -> None:
        self.label, self.interval, self.done = label, interval, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        started = time.monotonic()
        while not self.done.wait(self.interval):
            log.info("still building %s (%.0f s)", self.label, time.monotonic() - started)

    def __enter__(self) -> "_Heartbeat":
        self.thread.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.done.set()


def build_engine(bundle_dir: Path, plan: EnginePlan) -> Path:
    """Build ``plan`` into ``bundle_dir`` and write its sidecar; returns the engine path."""
    trt = require("tensorrt")
    cudart = cuda_runtime()
    onnx_path = Path(bundle_dir) / plan.onnx
    if not onnx_path.is_file():
        raise ExportError("{} needs {}, which {} does not have".format(plan.engine, plan.onnx, bundle_dir))
    logger = _make_logger(trt)
    builder = trt.Builder(logger)
    flags = 0
    for name in plan.network_flags:
        flags |= 1 << int(getattr(trt.NetworkDefinitionCreationFlag, name))
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [describe_parser_error(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ExportError("TensorRT {} cannot parse {}: {}".format(trt.__version__, plan.onnx, "; ".join(errors)))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, plan.workspace_mib << 20)
    for name in plan.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    if plan.fp32_layers:
        pin_fp32_layers(trt, network, plan.fp32_layers)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    if plan.dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = plan.dla_core
    if plan.calibration_cache:  # implicit INT8 (the DLA flow): the cache, its header set to this TensorRT
        text = (Path(bundle_dir) / plan.calibration_cache).read_text()
        calibrator = _make_cache_calibrator(trt, stamped(text, tensorrt_version_number(trt.__version__)).encode())
        config.int8_calibrator = calibrator  # the reference must outlive the build
    shapes = plan.shapes()
    if shapes:
        profile = builder.create_optimization_profile()
        profile.set_shape(plan.input_name, shapes["min"], shapes["opt"], shapes["max"])
        config.add_optimization_profile(profile)
    cache_path = Path(plan.timing_cache) if plan.timing_cache else None
    cache_bytes = cache_path.read_bytes() if cache_path is not None and cache_path.is_file() else b""
    config.set_timing_cache(config.create_timing_cache(cache_bytes), False)
    monitor = _make_progress_monitor(trt) if hasattr(trt, "IProgressMonitor") else None  # TensorRT >= 10
    if monitor is not None:
        config.progress_monitor = monitor  # the reference must outlive the build
    log.info("building %s %s engine from %s with TensorRT %s", plan.precision, plan.engine, plan.onnx, trt.__version__)
    with contextlib.nullcontext() if monitor is not None else _Heartbeat(plan.engine):
        serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(
            "TensorRT failed to build {}: {}".format(
                plan.engine, "; ".join(logger.errors[-3:]) or "no error was logged"
            )
        )
    engine_path = Path(bundle_dir) / plan.engine
    atomic_write_bytes(engine_path, bytes(memoryview(serialized)))
    if cache_path is not None:
        atomic_write_bytes(cache_path, bytes(memoryview(config.get_timing_cache().serialize())))
    sidecar = make_sidecar(
        plan, device_info(trt, cudart), sha256_file(onnx_path), sha256_file(engine_path), "edgetl (TensorRT Python API)"
    )
    atomic_write_text(engine_path.with_name(sidecar_file(plan.engine)), json.dumps(sidecar, indent=2) + "\n")
    return engine_path


def pin_fp32_layers(trt: Any, network: Any, nodes: Sequence[str]) -> List[str]:
    """Set the precision of the layers of ONNX ``nodes`` to fp32 (as trtexec --layerPrecisions does); returns
    the layer names. TensorRT's ONNX parser names a node's layer after the node, and any further layers it
    needs for that node ``<node>_<n>`` (onnx-tensorrt ImporterContext::registerLayer). A node without a
    layer is logged: there is nothing of it left to pin."""
    wanted = set(nodes)
    pinned, found = [], set()
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        base, _, suffix = layer.name.rpartition("_")
        node = layer.name if layer.name in wanted else base if suffix.isdigit() and base in wanted else None
        if node is not None:
            layer.precision = trt.float32
            pinned.append(layer.name)
            found.add(node)
    missing = sorted(wanted - found)
    if missing:
        log.warning("no TensorRT layer of the fp32 fallback node(s) %s: not pinned", ", ".join(missing))
    return pinned


Batches = Tuple[Optional[int], Optional[int], Optional[int]]  # --min/--opt/--max-batch, None: not given


def recorded_profile(bundle: Bundle, precision: str) -> Optional[BatchProfile]:
    """The batch range the bundle was exported with (its planned engine of ``precision``, else any)."""
    plans = bundle.manifest.get("engines", {})
    plan = plans.get(engine_file(precision)) or next(iter(plans.values()), None)
    return None if plan is None else EnginePlan.from_dict(plan).profile


def plan_for_bundle(
    bundle: Bundle,
    precision: str,
    target_name: str,
    batches: Batches = (None, None, None),
    workspace_mib: int = DEFAULT_WORKSPACE_MIB,
    timing_cache: Optional[str] = None,
    dla_core: Optional[int] = None,
) -> EnginePlan:
    """The engine plan for a bundle's fp32 ONNX (its io names and batch) on a TensorRT target; batch
    values not given come from the bundle (its static batch or the profile it was exported with), and
    the paths the engine is also written to (a Triton model.plan) from the export's plan of that engine."""
    info = bundle.model("fp32")
    if info is None:
        raise CheckpointError(
            "{} has no model.onnx to build an engine from; run 'edgetl export' first".format(bundle.root)
        )
    size = bundle.preprocess.input_size
    shape = (info.batch if info.batch else -1, 3, size, size)
    profile = batch_profile(info.batch, *batches, recorded=recorded_profile(bundle, precision))
    recorded = bundle.engine_plan(engine_file(precision, dla_core)) or {}
    int8_plans = [p for p in bundle.manifest.get("engines", {}).values() if p.get("onnx") == ONNX_FILES["int8"]]
    fp32_layers = next((p.get("fp32_layers", ()) for p in int8_plans), ())  # the INT8 model's fallback layers
    return plan_engine(
        resolve_trt_release(target_name),
        precision,
        info.input_name,
        info.output_name,
        shape,
        profile,
        workspace_mib,
        timing_cache,
        dla_core,
        recorded.get("also_write", ()),
        fp32_layers,
    )


def copies_problem(plan: EnginePlan, recorded: Optional[BatchProfile]) -> Optional[str]:
    """Why the engine cannot be written where ``plan.also_write`` says (a Triton plan model, whose config was
    written at export with max_batch_size = the export's ``recorded`` maximum): Triton sends any batch from 1
    to max_batch_size, so the engine's batch range must hold them; None when it does."""
    if not plan.also_write or recorded is None:
        return None
    low, high = (plan.profile.min, plan.profile.max) if plan.profile else (plan.input_shape[0],) * 2
    if low <= 1 and high >= recorded.max:
        return None
    return (
        "{} is also written to {}, whose config.pbtxt (written at export) says max_batch_size {}: Triton sends "
        "batches of 1 to {}, and this engine takes {} to {}; build with --min-batch 1 --max-batch {} or "
        "re-export with the batch range Triton should serve".format(
            plan.engine, plan.also_write[0], recorded.max, recorded.max, low, high, recorded.max
        )
    )


def build_bundle_engine(
    bundle_dir: Path,
    precision: str,
    batches: Batches = (None, None, None),
    workspace_mib: int = DEFAULT_WORKSPACE_MIB,
    timing_cache: Optional[str] = None,
    dla_core: Optional[int] = None,
) -> Path:
    """Build an engine for the running TensorRT from a bundle (the ``build-engine`` command), then check it on
    the bundle's verification sample (``verify_new_engine``)."""
    trt = require("tensorrt")
    bundle = Bundle.load(Path(bundle_dir))
    plan = plan_for_bundle(bundle, precision, trt.__version__, batches, workspace_mib, timing_cache, dla_core)
    recorded = bundle.engine_plan(plan.engine)
    problem = copies_problem(plan, EnginePlan.from_dict(recorded).profile if recorded else None)
    if problem:
        raise ConfigError(problem)
    if plan.calibration_cache and not (bundle.root / plan.calibration_cache).is_file():
        raise CheckpointError(
            "{} has no {}: a DLA INT8 engine takes its scales from it; export with '--int8 --int8-form trt'".format(
                bundle.root, plan.calibration_cache
            )
        )
    if plan.onnx == ONNX_FILES["fp16"] and bundle.model("fp16") is None:
        raise CheckpointError(
            "TensorRT {} is strongly typed: an fp16 engine needs {}; export with '--fp16 --trt-version {}'".format(
                trt.__version__, plan.onnx, plan.target
            )
        )
    if plan.onnx == ONNX_FILES["int8"]:
        int8_model = bundle.model("int8")
        if int8_model is None:
            raise CheckpointError("{} has no INT8 model; export it with '--int8 --int8-form trt'".format(bundle.root))
        if int8_model.int8_form != "trt":
            raise ConfigError(
                "{} is the CPU form (unsigned activations), which TensorRT rejects; re-export with "
                "'--int8 --int8-form trt'".format(plan.onnx)
            )
    engine = build_engine(bundle.root, plan)
    manifest = read_manifest(bundle.root)
    manifest.setdefault("engines", {})[plan.engine] = plan.to_dict()
    derive(manifest, plan.engine, plan.onnx, plan.precision, "tensorrt build")
    write_manifest(bundle.root, manifest)
    report = verify_new_engine(engine)
    if plan.also_write and not engine_verified(report):
        log.warning("%s is not verified: not written to %s", engine.name, ", ".join(plan.also_write))
        return engine
    for path in plan.also_write:  # copies of the verified engine, e.g. a Triton repository's <model>/1/model.plan
        atomic_write_bytes(bundle.root / path, engine.read_bytes())
    return engine


def engine_verified(report: Optional[VerifyReport]) -> bool:
    """Whether the engine ran on the verification sample and passed: one that could not run (no usable GPU
    here, no sample in the bundle) is not verified."""
    return report is not None and bool(report.checks) and all(c.status == PASSED for c in report.checks)


def verify_new_engine(engine: Path) -> Optional[VerifyReport]:
    """Run a just-built engine on its bundle's verification sample. One that fails is renamed
    ``<engine>.rejected`` (its sidecar too), so nothing serves it, and VerificationError (exit 3) is raised;
    one that could not run here (DependencyError: no usable GPU) and a bundle without a sample (exported
    before edgetl had one) leave it built but unverified, with a warning (see ``engine_verified``)."""
    try:
        report = verify_bundle(engine.parent, [engine.name])
    except CheckpointError as exc:
        log.warning("%s is not verified: %s", engine.name, exc)
        return None
    not_run = [c for c in report.checks if c.status == NOT_RUN]
    if not_run:
        log.warning("%s is not verified: it could not run here: %s", engine.name, not_run[0].detail)
        return report
    if report.failures:
        rejected = engine.with_name(engine.name + REJECTED_SUFFIX)
        engine.replace(rejected)
        sidecar = engine.with_name(sidecar_file(engine.name))
        if sidecar.is_file():
            sidecar.replace(rejected.with_name(sidecar_file(rejected.name)))
        raise_on_failure(report, "; the engine was moved to " + rejected.name)
    log.info("%s verified: %s", engine.name, report.checks[0].detail)
    return report


def write_trtexec_sidecar(bundle_dir: Path, engine: str) -> Path:
    """Sidecar for an engine built by ``build_engine.sh`` (trtexec), from the plan in ``bundle.json``."""
    trt = require("tensorrt")
    bundle_dir = Path(bundle_dir)
    data = read_manifest(bundle_dir).get("engines", {}).get(engine)
    if data is None or not (bundle_dir / engine).is_file():
        raise CheckpointError(
            "{} is not a planned engine of {} (see bundle.json) or was not built".format(engine, bundle_dir)
        )
    plan = EnginePlan.from_dict(data)
    sidecar = make_sidecar(
        plan,
        device_info(trt, cuda_runtime()),
        sha256_file(bundle_dir / plan.onnx),
        sha256_file(bundle_dir / engine),
        "trtexec (build_engine.sh)",
    )
    path = bundle_dir / sidecar_file(engine)
    atomic_write_text(path, json.dumps(sidecar, indent=2) + "\n")
    return path


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgetl.trt.build", description=__doc__.splitlines()[0])
    parser.add_argument("--sidecar", required=True, metavar="ENGINE", help="engine file built by build_engine.sh")
    parser.add_argument("--bundle", default=".", help="bundle folder (default: the current folder)")
    args = parser.parse_args(argv)
    try:
        print(write_trtexec_sidecar(Path(args.bundle), args.sidecar))
    except EdgetlError as exc:
        print("Error: {}".format(exc), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
