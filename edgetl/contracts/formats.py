"""The formats table: every name a bundle, the exporter, the runtime, the quantizer and the CLI's
choices share, defined once (after Ultralytics' ``export_formats()``). Torch-free, Python 3.8."""

from __future__ import annotations

from typing import Dict, NamedTuple, Optional

from edgetl.core.cpu import CPU_ISAS

PRECISIONS = ("fp32", "fp16", "int8")
# the ONNX operators of explicit (Q/DQ) quantization
Q_OP, DQ_OP = "QuantizeLinear", "DequantizeLinear"
# ONNX model kinds in a bundle -> file name. "baked": uint8 NHWC input with normalisation inside the graph.
ONNX_FILES = {"fp32": "model.onnx", "baked": "model_baked.onnx", "int8": "model_int8.onnx", "fp16": "model_fp16.onnx"}
# ort-trt: ONNX Runtime's TensorRT execution provider (offered only where a real session starts on it)
BACKENDS = ("auto", "torch", "onnx", "onnx-int8", "trt", "ort-trt")


class DeployTarget(NamedTuple):
    """What one consumer of an export (``edgetl export --for NAME``) loads: tensor names, output, batch."""

    input_name: str
    output_name: str
    softmax: bool  # the consumer reads the output as confidences (it thresholds or ranks probabilities)
    static_batch: Optional[int]  # None: the bundle's batch (its --batch, or the dynamic axis and batch profile)
    folder: Optional[str]  # the folder of OUT it is written to (None: OUT itself)


# ``--for``: "bundle" is edgetl's own (always written: every other target derives from its checked files).
# jetson-inference: the names its imagenet program is pointed at (--input_blob/--output_blob), a softmax (it
# thresholds raw outputs) and a batch of 1 (it builds no optimisation profile). deepstream: Gst-nvinfer's
# classifier parser reads softmax probabilities. triton: the bundle's models as they are (logits).
CONSUMERS = {
    "bundle": DeployTarget("input", "logits", False, None, None),
    "jetson-inference": DeployTarget("input_0", "output_0", True, 1, "jetson-inference"),
    "deepstream": DeployTarget("input", "probabilities", True, None, "deepstream"),
    "triton": DeployTarget("input", "logits", False, None, "triton"),
}
IO_NAMES = {name: (target.input_name, target.output_name) for name, target in CONSUMERS.items()}
CONSUMER_NAMES = tuple(CONSUMERS)
# the TensorRT calibration cache of the INT8 (trt form) Q/DQ scales, in a bundle and the targets that use it
CALIBRATION_CACHE = "calibration.cache"
CALIB_METHODS = ("minmax", "entropy", "percentile")
# How a frame becomes the network input (edgetl.contracts.geometry): edgetl's resize + centre crop, or the exact
# geometry of a consumer: jetson-inference's imagenet (whole frame stretched, floor-index nearest), DeepStream
# nvinfer's scaling (stretched; letterboxed with maintain-aspect-ratio=1, padded right/bottom, or centred with
# symmetric-padding=1).
GEOMETRIES = ("center-crop", "imagenet-stretch", "nvinfer-stretch", "nvinfer-letterbox", "nvinfer-letterbox-symmetric")
# --train-geometry: RandomResizedCrop + flip, or a deployment geometry of the whole image + random flip
TRAIN_GEOMETRIES = ("random-resized-crop",) + GEOMETRIES
# --augment: none = the eval view (or the train geometry unflipped), default = the train geometry + flip,
# strong = default + TrivialAugmentWide per image + RandomErasing per batch (edgetl.data.strong_augment)
AUGMENTS = ("none", "default", "strong")
# --balance: class-balanced sampling (each class drawn equally often) or class-weighted loss
BALANCES = ("none", "sampler", "loss")
# INT8 forms: trt = symmetric signed Q/DQ that TensorRT's explicit quantization takes; cpu = ONNX Runtime's CPU kernels
INT8_FORMS = ("trt", "cpu")
# the calibration each INT8 form gets by default: the trt form's symmetric int8 activations lose a bit to the
# sign, and entropy calibration (TensorRT's own IInt8EntropyCalibrator2) clips outliers for them; the cpu
# form's asymmetric uint8 keeps min-max ranges, as onnxruntime does by default
DEFAULT_CALIB_METHODS = {"trt": "entropy", "cpu": "minmax"}
# --int8-fallback: auto = keep the most sensitive layers in fp32 when the INT8 model misses its gate
INT8_FALLBACKS = ("auto", "none")
CPU_ISA_CHOICES = ("auto",) + CPU_ISAS  # --int8-cpu-isa: auto = the exporting machine's


class Int8CpuForm(NamedTuple):
    """Activation/weight types of the CPU INT8 form for one instruction set, and why."""

    activations: str  # uint8 or int8
    weights: str  # int8 or uint8
    reduce_range: bool  # 7-bit weights
    why: str

    @property
    def name(self) -> str:
        """onnxruntime's naming: activations then weights, U8 = uint8, S8 = int8 (``U8S8``)."""
        letters = {"uint8": "U8", "int8": "S8"}
        return letters[self.activations] + letters[self.weights] + (" reduce_range" if self.reduce_range else "")


# onnxruntime's quantization guide: U8S8 is fastest on x86, but without VNNI its VPMADDUBSW path can
# saturate (it advises reduce_range or U8U8 there); S8S8 is its default elsewhere. The avx2 row keeps
# every prediction of the INT8 test fixture under an emulated AVX2-only CPU and the U8S8 kernels' speed;
# U8U8 kept the predictions too but ran slower (benchmarks/results/int8_forms.md).
INT8_CPU_FORMS: Dict[str, Int8CpuForm] = {
    "vnni": Int8CpuForm("uint8", "int8", False, "VNNI (VPDPBUSD) multiplies u8 x s8 without saturation: fastest exact"),
    "avx2": Int8CpuForm(
        "uint8", "int8", True, "x86 without VNNI: u8 x s8 (VPMADDUBSW) can saturate; 7-bit weights cannot"
    ),
    "arm64": Int8CpuForm("int8", "int8", False, "ARM dot-product kernels take s8 x s8 (onnxruntime's default form)"),
}
