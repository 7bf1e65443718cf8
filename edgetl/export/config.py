"""The options of ``edgetl export`` (``ExportConfig``), validated on creation.

Torch-free and Python 3.8: the CLI imports this module for its defaults at import time, on the
device too. Names (consumers, INT8 forms, calibration methods) come from ``edgetl.spec.formats``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from edgetl.core.cpu import cpu_isa
from edgetl.core.fileio import check_out_path
from edgetl.errors import ConfigError
from edgetl.spec.formats import (
    CALIB_METHODS,
    CONSUMERS,
    DEFAULT_CALIB_METHODS,
    INT8_CPU_FORMS,
    INT8_FALLBACKS,
    INT8_FORMS,
    TARGETS,
)
from edgetl.trt.plan import (
    DEFAULT_TARGET,
    DEFAULT_WORKSPACE_MIB,
    BatchProfile,
    batch_profile,
    check_dla,
    onnx_versions,
    resolve_target,
)

# the opsets torch's TorchScript exporter emits directly (edgetl.export.torch_to_onnx)
EXPORTER_OPSETS = range(13, 23)
DEFAULT_CALIB_SIZE = 256
BUNDLE, JETSON_INFERENCE, DEEPSTREAM, TRITON = CONSUMERS  # the names of edgetl.spec.formats.TARGETS
_TRT_CONSUMERS = (DEEPSTREAM,)  # targets that run the INT8 model through TensorRT (its trt form)


def default_int8_form(trt: bool, dla_core: Optional[int], targets: Tuple[str, ...]) -> str:
    """trt when TensorRT runs the INT8 model (an engine here, a DLA, a TensorRT consumer), else cpu."""
    return "trt" if trt or dla_core is not None or any(t in _TRT_CONSUMERS for t in targets) else "cpu"


_OPTION_NAMES = {"workspace_mib": "--workspace", "targets": "--for"}  # fields whose option is not --<field>


@dataclass(frozen=True)
class ExportConfig:
    """Every option of ``edgetl export``; validated on creation."""

    run: str
    out: Optional[str] = None  # None: the run folder
    opset: int = 17
    batch: Optional[int] = None  # None: dynamic batch axis (the jetson-inference target is always 1)
    targets: Tuple[str, ...] = (BUNDLE,)  # --for: keys of edgetl.spec.formats.TARGETS; the bundle is always written
    bake_preprocess: bool = False
    int8: bool = False
    int8_form: Optional[str] = None  # None: "trt" with trt=True, else "cpu"
    int8_cpu_isa: str = "auto"  # the CPU the cpu form is built for (auto: this machine's; see spec.formats)
    calib_data: Optional[str] = None  # class folders, a flat image folder or a calibration manifest
    calib_size: int = DEFAULT_CALIB_SIZE
    calib_method: Optional[str] = None  # None: the form's default (edgetl.spec.formats.DEFAULT_CALIB_METHODS)
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
    dla_core: Optional[int] = None  # build the engine for this Jetson DLA core (GPU fallback)
    val_images: int = 500  # parity/accuracy images: all of the val split up to this many
    seed: int = 0

    def __post_init__(self) -> None:
        targets = tuple(dict.fromkeys(self.targets))
        unknown = [t for t in targets if t not in CONSUMERS]
        if unknown:
            raise ConfigError("--for must be one of {}; got {}".format(", ".join(CONSUMERS), ", ".join(unknown)))
        object.__setattr__(self, "targets", targets or (BUNDLE,))
        if self.int8_form is not None and not self.int8:  # checked before the default fills it in
            raise ConfigError("--int8-form only applies with --int8 (it chooses the INT8 model's form)")
        if self.int8_form is None:
            object.__setattr__(self, "int8_form", default_int8_form(self.trt, self.dla_core, targets))
        if self.calib_method is None:
            object.__setattr__(self, "calib_method", DEFAULT_CALIB_METHODS.get(self.int8_form or "", CALIB_METHODS[0]))
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
            (
                not (self.int8 and self.int8_form == "cpu" and DEEPSTREAM in targets),
                "--for deepstream runs INT8 through TensorRT, which rejects the cpu form; use --int8-form trt",
            ),
            (
                not (TRITON in targets and self.batch is not None),
                "--for triton serves a dynamic batch (max_batch_size from the batch profile); drop --batch",
            ),
            (self.int8 or self.calib_data is None, "--calib-data only applies with --int8"),
            (self.calib_size >= 1, "--calib-size must be >= 1"),
            (self.calib_method in CALIB_METHODS, "--calib-method must be one of " + ", ".join(CALIB_METHODS)),
            (self.max_int8_drop >= 0, "--max-int8-drop must be >= 0"),
            (self.val_images >= 1, "--val-images must be >= 1"),
            (self.gate_images >= 0, "--gate-images must be >= 0"),
            (self.int8_fallback in INT8_FALLBACKS, "--int8-fallback must be one of " + ", ".join(INT8_FALLBACKS)),
            (self.int8_fallback_max_layers >= 1, "--int8-fallback-max-layers must be >= 1"),
            (self.workspace_mib >= 1, "--workspace must be >= 1 MiB, got {}".format(self.workspace_mib)),
            (
                self.calib_data is None or Path(self.calib_data).expanduser().exists(),
                "--calib-data not found: {}".format(self.calib_data),
            ),
            (self.timing_cache is None or not Path(self.timing_cache).is_dir(), "--timing-cache is a folder"),
            (math.isfinite(self.max_int8_drop), "--max-int8-drop must be finite"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        onnx_versions(resolve_target(self.trt_version), self.opset)
        profile = self.profile()  # validates the batch range
        if self.out is not None:
            check_out_path(Path(self.out), "--out")
        if self.dla_core is not None:
            if self.int8 and self.int8_form != "trt":
                raise ConfigError("--dla-core: DLA INT8 takes the trt form's calibration cache; use --int8-form trt")
            static = profile is None or profile.min == profile.max
            check_dla(resolve_target(self.trt_version), self.precision, self.dla_core, static)

    @property
    def precision(self) -> str:
        return "int8" if self.int8 else "fp16" if self.fp16 else "fp32"

    @property
    def tensor_names(self) -> Tuple[str, str]:
        """(input, output) tensor names of the bundle's models (each other target has its own)."""
        return TARGETS[BUNDLE].input_name, TARGETS[BUNDLE].output_name

    @property
    def softmax(self) -> bool:
        """Whether the bundle's models end in a softmax (the targets that need one export their own)."""
        return TARGETS[BUNDLE].softmax

    def profile(self) -> Optional[BatchProfile]:
        """The engine's batch range: None for a static batch (then any given range must equal it)."""
        return batch_profile(self.batch, self.min_batch, self.opt_batch, self.max_batch)

    def cli_args(self) -> List[str]:
        """The ``edgetl export`` arguments that make this config (options at their defaults left out)."""
        implied: Dict[str, Any] = {
            "int8_form": default_int8_form(self.trt, self.dla_core, self.targets),
            "int8_cpu_isa": cpu_isa(),
            "calib_method": DEFAULT_CALIB_METHODS.get(self.int8_form or ""),
        }
        args = [self.run]
        for field in fields(self):
            value = getattr(self, field.name)
            if field.name == "run" or value == implied.get(field.name, field.default):
                continue
            flag = _OPTION_NAMES.get(field.name, "--" + field.name.replace("_", "-"))
            if isinstance(value, bool):
                args.append(flag)
            elif isinstance(value, tuple):
                for item in value:
                    args += [flag, str(item)]
            else:
                args += [flag, str(value)]
        return args
