"""The options of ``edgetl export`` (``ExportConfig``), validated on creation, each field declaring its
command-line option.

Torch-free and Python 3.8: the CLI builds ``edgetl export``'s options from this module, on the
device too. Names (consumers, INT8 forms, calibration methods) come from ``edgetl.contracts.formats``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional, Tuple

from edgetl.contracts.formats import (
    CALIB_METHODS,
    CONSUMER_NAMES,
    CONSUMERS,
    CPU_ISA_CHOICES,
    DEFAULT_CALIB_METHODS,
    INT8_FALLBACKS,
    INT8_FORMS,
    PRECISIONS,
)
from edgetl.core.cpu import cpu_isa
from edgetl.core.fileio import check_out_path
from edgetl.core.options import Shortcut, option
from edgetl.errors import ConfigError
from edgetl.export.recover_options import DEFAULT_RECOVER_BUDGET_S, recovery_steps
from edgetl.trt.plan import (
    DEFAULT_TRT_RELEASE,
    DEFAULT_WORKSPACE_MIB,
    BatchProfile,
    batch_profile,
    check_dla,
    onnx_versions,
    resolve_trt_release,
)

# the opsets torch's TorchScript exporter emits directly (edgetl.export.torch_to_onnx)
EXPORTER_OPSETS = range(13, 23)
DEFAULT_CALIB_SIZE = 256
BUNDLE, JETSON_INFERENCE, DEEPSTREAM, TRITON = CONSUMER_NAMES  # the names of edgetl.contracts.formats.CONSUMERS
_TRT_CONSUMERS = (DEEPSTREAM,)  # targets that run the INT8 model through TensorRT (its trt form)


def default_int8_form(trt: bool, dla_core: Optional[int], targets: Tuple[str, ...]) -> str:
    """trt when TensorRT runs the INT8 model (an engine here, a DLA, a TensorRT consumer), else cpu."""
    return "trt" if trt or dla_core is not None or any(t in _TRT_CONSUMERS for t in targets) else "cpu"


PRECISION, INT8, TENSORRT, TARGETS_GROUP, OUTPUT = "Precision", "INT8", "TensorRT", "Targets", "Output and checks"
EXPORT_GROUPS = (PRECISION, INT8, TENSORRT, TARGETS_GROUP, OUTPUT)  # the help's sections, in order


@dataclass(frozen=True)
class ExportConfig:
    """Every option of ``edgetl export``; validated on creation. ``export_run`` saves it ``resolved`` (every
    ``auto`` of the INT8 options made concrete) in the export report, and never changes it afterwards."""

    run: str = option(argument=True, kind="path", group=OUTPUT)
    out: Optional[str] = option(
        None, group=OUTPUT, kind="path", output=True, help="Bundle folder (default: the run folder)."
    )
    opset: int = option(17, group=OUTPUT, kind="int", help="ONNX opset (checked against --trt-version).")
    batch: Optional[int] = option(
        None, group=OUTPUT, kind="int", help="Static batch size (default: dynamic batch axis)."
    )  # the jetson-inference target is always 1
    targets: Tuple[str, ...] = option(
        (BUNDLE,),
        group=TARGETS_GROUP,
        flags=("--for",),
        choices=CONSUMER_NAMES,
        multiple=True,
        help="Who runs the export (repeatable). bundle: edgetl's runtime, in OUT (always written); jetson-inference "
        "(imagenet), deepstream (Gst-nvinfer) and triton (a model repository) each get OUT/<name>/, a folder "
        "that consumer loads as it is, with a README.",
    )
    bake_preprocess: bool = option(
        False,
        group=OUTPUT,
        kind="flag",
        help="Also write model_baked.onnx: uint8 NHWC input, scale + mean/std inside the graph.",
    )
    precision: str = option(
        "fp32",
        group=PRECISION,
        choices=PRECISIONS,
        help="fp32: model.onnx alone; int8: also model_int8.onnx (static Q/DQ, calibrated, accuracy-gated); "
        "fp16: an FP16 engine (and model_fp16.onnx for TensorRT >= 11).",
        shortcuts=(
            Shortcut("--int8", "int8", "Short for --precision int8."),
            Shortcut("--fp16", "fp16", "Short for --precision fp16."),
        ),
    )
    int8_form: Optional[str] = option(
        None,
        group=INT8,
        choices=INT8_FORMS,
        auto=True,
        help="trt: symmetric signed Q/DQ for TensorRT; cpu: fastest on ONNX Runtime CPU. auto: trt with --trt, "
        "--dla-core or --for deepstream, else cpu.",
    )
    int8_cpu_isa: str = option(
        "auto",
        group=INT8,
        choices=CPU_ISA_CHOICES,
        help="The CPU the cpu form is built for: vnni (U8S8), avx2 (x86 without VNNI: U8S8 with 7-bit weights, "
        "no saturation) or arm64 (S8S8, e.g. a Jetson's Cortex-A78AE); auto: this machine's.",
    )
    calib_data: Optional[str] = option(
        None,
        group=INT8,
        kind="path",
        help="Calibration images: class folders, a flat folder, or a calibration manifest.json to rebuild "
        "(default: the run's training split).",
    )
    calib_size: int = option(DEFAULT_CALIB_SIZE, group=INT8, kind="int", help="Calibration images, at most.")
    calib_method: Optional[str] = option(
        None,
        group=INT8,
        choices=CALIB_METHODS,
        auto=True,
        help="auto: entropy for the trt form (TensorRT's own calibrator; its symmetric ranges need outliers "
        "clipped), minmax for the cpu form.",
    )
    calib_dir: str = option(
        "calibration",
        group=INT8,
        kind="path",
        help="Calibration manifests go to CALIB_DIR/<run name>-<hash of the run path>/manifest.json.",
    )
    max_int8_drop: float = option(
        1.0,
        group=INT8,
        kind="float",
        help="Fail (exit 3) unless the 95% upper bound of INT8's top-1 disagreement with fp32 (val + held-out "
        "train images) is within this many points.",
    )
    gate_images: int = option(
        1000,
        group=INT8,
        kind="int",
        help="Training images not used for calibration that the INT8 gate adds to the val images (at most).",
    )
    int8_fallback: str = option(
        INT8_FALLBACKS[0],
        group=INT8,
        choices=INT8_FALLBACKS,
        help="auto: when INT8 misses the gate, keep the fewest most quantization-sensitive layers (ranked on "
        "calibration images) in fp32 until it passes (the last --int8-recover step); none: leave that step out.",
    )
    int8_fallback_max_layers: int = option(
        8, group=INT8, kind="int", help="The most layers --int8-fallback auto may keep in fp32."
    )
    gate_data: Optional[str] = option(
        None,
        group=INT8,
        kind="path",
        help="A folder of unlabelled images from the deployment's distribution that the INT8 gate also judges.",
    )
    int8_recover: str = option(
        "auto",
        group=INT8,
        help="When INT8 misses its gate, try these steps cheapest first and keep the first that passes: auto (all), "
        "none, or a comma list of head (re-solve a feature extractor's linear head on its INT8 features; judged on "
        "labelled held-out images) and fallback (layers in fp32, as --int8-fallback auto).",
    )
    int8_recover_budget: float = option(
        DEFAULT_RECOVER_BUDGET_S,
        group=INT8,
        kind="float",
        help="Seconds the recovery steps may take; when spent, no further step starts, the best attempt is "
        "reported and export exits 3.",
    )
    trt: bool = option(
        False, group=TENSORRT, kind="flag", help="Build the TensorRT engine here (needs TensorRT and a GPU)."
    )
    trt_version: str = option(
        DEFAULT_TRT_RELEASE,
        group=TENSORRT,
        help="TensorRT on the device: 8.5, 8.6, 10.3, 10.x, 11.x or a full version; sets ONNX opset/IR limits.",
    )
    min_batch: Optional[int] = option(
        None, group=TENSORRT, kind="int", help="Optimisation profile (dynamic batch), default 1."
    )
    opt_batch: Optional[int] = option(None, group=TENSORRT, kind="int", help="Default: --min-batch.")
    max_batch: Optional[int] = option(None, group=TENSORRT, kind="int", help="Default: 8 (or --opt-batch if larger).")
    workspace_mib: int = option(
        DEFAULT_WORKSPACE_MIB,
        group=TENSORRT,
        kind="int",
        flags=("--workspace",),
        help="TensorRT workspace memory pool, MiB.",
    )
    timing_cache: Optional[str] = option(
        None, group=TENSORRT, kind="path", help="Persistent TensorRT timing cache file (read and updated)."
    )
    dla_core: Optional[int] = option(
        None,
        group=TENSORRT,
        kind="int",
        help="Build the engine for this Jetson DLA core (layers it cannot run fall back to the GPU; fp16 or int8).",
    )
    val_images: int = option(
        500,
        group=OUTPUT,
        kind="int",
        help="Validation images for the parity and accuracy gates (all of them up to this many).",
    )
    seed: int = option(0, group=OUTPUT, kind="int", help="Seeds the choice of images and the random inputs.")

    def __post_init__(self) -> None:
        targets = tuple(dict.fromkeys(self.targets))
        unknown = [t for t in targets if t not in CONSUMER_NAMES]
        if unknown:
            raise ConfigError.about(f"{{targets}} must be one of {', '.join(CONSUMER_NAMES)}; got {', '.join(unknown)}")
        int8 = self.precision == "int8"
        form = self.int8_form or default_int8_form(self.trt, self.dla_core, targets)
        method = self.calib_method or DEFAULT_CALIB_METHODS.get(form, CALIB_METHODS[0])
        if self.int8_form is not None and self.precision != "int8":
            raise ConfigError.about("{int8_form} only applies with {precision} int8 (it chooses the INT8 model's form)")
        checks = [
            (
                self.opset in EXPORTER_OPSETS,
                f"{{opset}} must be between {EXPORTER_OPSETS[0]} and {EXPORTER_OPSETS[-1]}",
            ),
            (self.batch is None or self.batch >= 1, "{batch} must be >= 1"),
            (self.precision in PRECISIONS, "{precision} must be one of " + ", ".join(PRECISIONS)),
            (form in INT8_FORMS, "{int8_form} must be one of " + ", ".join(INT8_FORMS)),
            (self.int8_cpu_isa in CPU_ISA_CHOICES, "{int8_cpu_isa} must be one of " + ", ".join(CPU_ISA_CHOICES)),
            (
                not (self.trt and int8 and form == "cpu"),
                "{int8_form} cpu writes unsigned activations, which TensorRT rejects; use {int8_form} trt with {trt}",
            ),
            (
                not (int8 and form == "cpu" and DEEPSTREAM in targets),
                "{targets} deepstream runs INT8 through TensorRT, which rejects the cpu form; use {int8_form} trt",
            ),
            (
                not (TRITON in targets and self.batch is not None),
                "{targets} triton serves a dynamic batch (max_batch_size from the batch profile); drop {batch}",
            ),
            (int8 or self.calib_data is None, "{calib_data} only applies with {precision} int8"),
            (self.calib_size >= 1, "{calib_size} must be >= 1"),
            (method in CALIB_METHODS, "{calib_method} must be one of " + ", ".join(CALIB_METHODS)),
            (self.max_int8_drop >= 0, "{max_int8_drop} must be >= 0"),
            (self.val_images >= 1, "{val_images} must be >= 1"),
            (self.gate_images >= 0, "{gate_images} must be >= 0"),
            (self.int8_fallback in INT8_FALLBACKS, "{int8_fallback} must be one of " + ", ".join(INT8_FALLBACKS)),
            (self.int8_fallback_max_layers >= 1, "{int8_fallback_max_layers} must be >= 1"),
            (self.workspace_mib >= 1, f"{{workspace_mib}} must be >= 1 MiB, got {self.workspace_mib}"),
            (math.isfinite(self.max_int8_drop), "{max_int8_drop} must be finite"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError.about(message)
        if self.calib_data is not None and not Path(self.calib_data).expanduser().exists():
            raise ConfigError.about("{calib_data} not found: {path}", path=self.calib_data)
        if self.timing_cache is not None and Path(self.timing_cache).is_dir():
            raise ConfigError.about("{timing_cache} is a folder")
        self._check_recovery()
        onnx_versions(resolve_trt_release(self.trt_version), self.opset)
        profile = self.profile()  # validates the batch range
        if self.out is not None:
            check_out_path(Path(self.out), "{out}")
        if self.dla_core is not None:
            if int8 and form != "trt":
                raise ConfigError.about(
                    "{dla_core}: DLA INT8 takes the trt form's calibration cache; use {int8_form} trt"
                )
            static = profile is None or profile.min == profile.max
            check_dla(resolve_trt_release(self.trt_version), self.precision, self.dla_core, static)
            if TRITON in targets and profile is not None and profile.max != 1:
                raise ConfigError(
                    "--for triton with --dla-core: a DLA engine runs one fixed batch and Triton sends any batch "
                    "from 1 to max_batch_size; use --min-batch 1 --max-batch 1"
                )

    def resolved(self) -> "ExportConfig":
        """This config as the export runs it and saves it: the targets without repeats, and for an INT8 export
        its form, calibration method and CPU (``auto``: this machine's) made concrete. Options that do not
        apply (the INT8 ones of an fp32 export) stay as given. Resolving a resolved config changes nothing."""
        targets = tuple(dict.fromkeys(self.targets)) or (BUNDLE,)
        if self.precision != "int8":
            return replace(self, targets=targets)
        form = self.int8_form or default_int8_form(self.trt, self.dla_core, targets)
        return replace(
            self,
            targets=targets,
            int8_form=form,
            calib_method=self.calib_method or DEFAULT_CALIB_METHODS.get(form, CALIB_METHODS[0]),
            int8_cpu_isa=cpu_isa() if self.int8_cpu_isa == "auto" else self.int8_cpu_isa,
        )

    def _check_recovery(self) -> None:
        """The options of the INT8 gate's extra inputs and of the recovery ladder."""
        recovery_steps(self.int8_recover, self.int8_fallback)  # raises ConfigError on an unknown step
        if not self.int8_recover_budget > 0:
            raise ConfigError.about("{int8_recover_budget} must be > 0 seconds")
        if self.gate_data is not None and self.precision != "int8":
            raise ConfigError.about("{gate_data} only applies with {precision} int8")
        if self.gate_data is not None and not Path(self.gate_data).expanduser().is_dir():
            raise ConfigError.about("{gate_data} is not a folder: {path}", path=self.gate_data)

    @property
    def tensor_names(self) -> Tuple[str, str]:
        """(input, output) tensor names of the bundle's models (each other target has its own)."""
        return CONSUMERS[BUNDLE].input_name, CONSUMERS[BUNDLE].output_name

    @property
    def softmax(self) -> bool:
        """Whether the bundle's models end in a softmax (the targets that need one export their own)."""
        return CONSUMERS[BUNDLE].softmax

    def profile(self) -> Optional[BatchProfile]:
        """The engine's batch range: None for a static batch (then any given range must equal it)."""
        return batch_profile(self.batch, self.min_batch, self.opt_batch, self.max_batch)
