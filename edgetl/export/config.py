"""The options of ``edgetl export`` (``ExportConfig``), validated on creation.

Torch-free and Python 3.8: the CLI imports this module for its defaults at import time, on the
device too. Names (consumers, INT8 forms, calibration methods) come from ``edgetl.spec.formats``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

from edgetl.core.cpu import cpu_isa
from edgetl.errors import ConfigError
from edgetl.spec.formats import CALIB_METHODS, CONSUMERS, INT8_CPU_FORMS, INT8_FALLBACKS, INT8_FORMS, IO_NAMES
from edgetl.trt.plan import (
    DEFAULT_TARGET,
    DEFAULT_WORKSPACE_MIB,
    BatchProfile,
    batch_profile,
    onnx_versions,
    resolve_target,
)

# the opsets torch's TorchScript exporter emits directly (edgetl.export.torch_to_onnx)
EXPORTER_OPSETS = range(13, 23)
DEFAULT_CALIB_SIZE = 256
JETSON_INFERENCE = "jetson-inference"


@dataclass(frozen=True)
class ExportConfig:
    """Every option of ``edgetl export``; validated on creation."""

    run: str
    out: Optional[str] = None  # None: the run folder
    opset: int = 17
    batch: Optional[int] = None  # None: dynamic batch axis (1 for the jetson-inference consumer)
    consumer: str = "bundle"  # who runs the export: a key of edgetl.spec.formats.IO_NAMES
    bake_preprocess: bool = False
    int8: bool = False
    int8_form: Optional[str] = None  # None: "trt" with trt=True, else "cpu"
    int8_cpu_isa: str = "auto"  # the CPU the cpu form is built for (auto: this machine's; see spec.formats)
    calib_data: Optional[str] = None  # class folders, a flat image folder or a calibration manifest
    calib_size: int = DEFAULT_CALIB_SIZE
    calib_method: str = CALIB_METHODS[0]
    calib_dir: str = "calibration"  # manifests go to <calib_dir>/<run name>-<path hash>/manifest.json
    max_int8_drop: float = 1.0  # points: bound on INT8's top-1 disagreement with fp32 (edgetl.export.gate)
    gate_images: int = 1000  # held-out training images (not used by calibration) the INT8 gate adds, at most
    int8_fallback: str = INT8_FALLBACKS[0]  # auto: a missed gate keeps the most sensitive layers in fp32
    int8_fallback_max_layers: int = 8  # the most layers the fallback may keep in fp32
    fp16: bool = False
    trt: bool = False
    trt_version: str = DEFAULT_TARGET  # TensorRT on the device: sets the ONNX opset/IR limits
    min_batch: Optional[int] = None
    opt_batch: Optional[int] = None
    max_batch: Optional[int] = None
    workspace_mib: int = DEFAULT_WORKSPACE_MIB
    timing_cache: Optional[str] = None
    val_images: int = 500  # parity/accuracy images: all of the val split up to this many
    seed: int = 0

    def __post_init__(self) -> None:
        if self.consumer not in CONSUMERS:
            raise ConfigError("--for must be one of " + ", ".join(CONSUMERS))
        if self.consumer == JETSON_INFERENCE:
            if self.batch not in (None, 1):
                raise ConfigError(
                    "--for jetson-inference exports a static batch of 1 (jetson-inference builds no "
                    "optimisation profile); drop --batch {}".format(self.batch)
                )
            object.__setattr__(self, "batch", 1)
        if self.int8_form is None:
            object.__setattr__(self, "int8_form", "trt" if self.trt else "cpu")
        if self.int8_cpu_isa == "auto":
            object.__setattr__(self, "int8_cpu_isa", cpu_isa())
        checks = [
            (
                self.opset in EXPORTER_OPSETS,
                "--opset must be between {} and {}".format(EXPORTER_OPSETS[0], EXPORTER_OPSETS[-1]),
            ),
            (self.batch is None or self.batch >= 1, "--batch must be >= 1"),
            (not (self.int8 and self.fp16), "choose one of --int8 and --fp16"),
            (self.int8_form in INT8_FORMS, "--int8-form must be one of " + ", ".join(INT8_FORMS)),
            (self.int8_cpu_isa in INT8_CPU_FORMS, "--int8-cpu-isa must be one of auto, " + ", ".join(INT8_CPU_FORMS)),
            (
                not (self.trt and self.int8 and self.int8_form == "cpu"),
                "--int8-form cpu writes unsigned activations, which TensorRT rejects; use --int8-form trt with --trt",
            ),
            (self.int8 or self.calib_data is None, "--calib-data only applies with --int8"),
            (self.calib_size >= 1, "--calib-size must be >= 1"),
            (self.calib_method in CALIB_METHODS, "--calib-method must be one of " + ", ".join(CALIB_METHODS)),
            (self.max_int8_drop >= 0, "--max-int8-drop must be >= 0"),
            (self.val_images >= 1, "--val-images must be >= 1"),
            (self.gate_images >= 0, "--gate-images must be >= 0"),
            (self.int8_fallback in INT8_FALLBACKS, "--int8-fallback must be one of " + ", ".join(INT8_FALLBACKS)),
            (self.int8_fallback_max_layers >= 1, "--int8-fallback-max-layers must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        onnx_versions(resolve_target(self.trt_version), self.opset)
        self.profile()  # validates the batch range

    @property
    def precision(self) -> str:
        return "int8" if self.int8 else "fp16" if self.fp16 else "fp32"

    @property
    def tensor_names(self) -> Tuple[str, str]:
        """(input, output) tensor names the consumer expects."""
        return IO_NAMES[self.consumer]

    @property
    def softmax(self) -> bool:
        """Whether the model ends in a softmax: jetson-inference thresholds raw outputs as confidences."""
        return self.consumer == JETSON_INFERENCE

    def profile(self) -> Optional[BatchProfile]:
        """The engine's batch range: None for a static batch (then any given range must equal it)."""
        return batch_profile(self.batch, self.min_batch, self.opt_batch, self.max_batch)
