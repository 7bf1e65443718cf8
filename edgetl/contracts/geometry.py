"""Deployment geometry: the input pixels each consumer computes from a decoded frame, from its source code.

- ``imagenet-stretch``, jetson-inference's ``imagenet`` for an ONNX model (``c/imageNet.cpp`` ->
  ``cudaTensorNormMeanRGB`` in ``c/tensorConvert.cu``): the whole frame, no crop, output pixel ``(x, y)``
  reads source pixel ``(int)((float)x * scale)`` with ``scale = (float)src / (float)dst``, all in float32
  (a floor index, not a pixel centre), then ``((p * (1.0f / 255.0f)) - mean) / std`` with ImageNet's mean/std
  hard-coded in float32. Files are decoded by stb_image (jetson-utils ``imageIO.cpp``): no EXIF rotation,
  an alpha channel is dropped.
- ``nvinfer-*``, DeepStream's Gst-nvinfer on a full frame (``gstnvinfer.cpp``, ``get_converted_buffer``):
  the frame's width and height rounded down to even, scaled to the network size (stretch); with
  ``maintain-aspect-ratio=1`` to ``(W, (int)(W * h / (double)w))`` or ``((int)(H * w / (double)h), H)``,
  placed top-left (black padding right/bottom) or, with ``symmetric-padding=1``, at
  ``((W - width) / 2, (H - height) / 2)``.

Exact here: the source indices and the normalisation of ``imagenet``, the rectangles and black padding of
nvinfer. Approximations: decoding (PIL's libjpeg vs stb_image, nvjpeg or the video decoder) and the
interpolation inside nvinfer's rectangle (NvBufSurfTransform on the VIC or GPU, closed source; here
nearest or bilinear at pixel centres, to match nvinfer's ``scaling-filter``). Torch-free, Python 3.8.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np

from edgetl.contracts.formats import GEOMETRIES, TRAIN_GEOMETRIES
from edgetl.errors import ConfigError, DataError

CENTER_CROP, IMAGENET_STRETCH = GEOMETRIES[0], GEOMETRIES[1]
RANDOM_RESIZED_CROP = TRAIN_GEOMETRIES[0]
# jetson-inference imageNet.cpp, ONNX models: range (0, 1), then these, as float32 on the device
IMAGENET_MEAN = np.array((0.485, 0.456, 0.406), dtype=np.float32)
IMAGENET_STD = np.array((0.229, 0.224, 0.225), dtype=np.float32)
# nvinfer's ``scaling-filter`` values (NvBufSurfTransform_Inter) of the two filters approximated here
NVINFER_SCALING_FILTERS = {"nearest": 0, "bilinear": 1}
NVINFER_DEFAULT_FILTER = "bilinear"


@dataclass(frozen=True)
class NvinferScaling:
    """The two nvinfer config keys that decide where a frame lands in the network input."""

    maintain_aspect_ratio: bool
    symmetric_padding: bool


NVINFER_SCALING = {
    GEOMETRIES[2]: NvinferScaling(False, False),
    GEOMETRIES[3]: NvinferScaling(True, False),
    GEOMETRIES[4]: NvinferScaling(True, True),
}
# who computes each geometry, for reports
CONSUMER_OF_GEOMETRY = {
    CENTER_CROP: "edgetl predict, clients that follow preprocess.json: shorter side resized, centre crop",
    IMAGENET_STRETCH: "jetson-inference imagenet: whole frame, floor-index nearest",
    GEOMETRIES[2]: "DeepStream nvinfer: whole frame stretched",
    GEOMETRIES[3]: "nvinfer maintain-aspect-ratio=1: padded right/bottom",
    GEOMETRIES[4]: "nvinfer maintain-aspect-ratio=1 symmetric-padding=1: centred",
}
APPROXIMATIONS = (
    "exact: imagenet's source indices and normalisation, nvinfer's rectangles and black padding; approximate: "
    "JPEG decoding (PIL vs stb_image/nvjpeg) and the interpolation inside nvinfer's rectangle (VIC/GPU)"
)


def check_geometry(name: str, allowed: Sequence[str] = GEOMETRIES, option: str = "geometry") -> str:
    if name not in allowed:
        raise ConfigError("{} must be one of {}, got {!r}".format(option, ", ".join(allowed), name))
    return name


def decoded_like_device(geometry: str) -> bool:
    """Whether frames reach this geometry through a device decoder (no EXIF rotation, alpha dropped) rather
    than edgetl's loader. stb_image reads no EXIF; nvinfer takes decoded video/NVMM frames, which carry none."""
    return geometry not in (CENTER_CROP, RANDOM_RESIZED_CROP)


def cached_views_suffice(eval_geometry: str, train_geometry: str) -> bool:
    """Whether the decoded-image and feature caches can feed a run: they store resized centre-crop views, so
    any other geometry is computed from the whole image by the PIL pipeline (``--cache none``)."""
    return eval_geometry == CENTER_CROP and train_geometry == RANDOM_RESIZED_CROP


def imagenet_source_index(source: int, target: int) -> np.ndarray:
    """Source index of each of ``target`` output positions: ``(int)((float)x * ((float)source / (float)target))``
    in float32 (tensorConvert.cu). Truncation equals floor here: every operand is >= 0."""
    scale = np.float32(source) / np.float32(target)
    return (np.arange(target, dtype=np.float32) * scale).astype(np.int64)


def imagenet_stretch(frame: np.ndarray, width: int, height: int) -> np.ndarray:
    """uint8 (H, W, 3) frame -> (height, width, 3) pixels as imagenet samples them (whole frame, no crop)."""
    rows = imagenet_source_index(frame.shape[0], height)
    cols = imagenet_source_index(frame.shape[1], width)
    return np.ascontiguousarray(frame[rows[:, None], cols[None, :]])


def imagenet_normalize(pixels: np.ndarray) -> np.ndarray:
    """uint8 (..., H, W, 3) -> float32 (..., 3, H, W) as cudaTensorNormMeanRGB writes it: ``p * (1/255)`` (the
    ``+ 0.0f`` of the range is exact), minus mean, divided by std, each op in float32 (nvcc: IEEE mul/div)."""
    multiplier = (np.float32(1.0) - np.float32(0.0)) / np.float32(255.0)
    values = (pixels.astype(np.float32) * multiplier - IMAGENET_MEAN) / IMAGENET_STD
    return np.ascontiguousarray(np.moveaxis(values, -1, -3))


def imagenet_mismatch(mean: Sequence[float], std: Sequence[float]) -> Optional[str]:
    """Why imagenet cannot normalise like a model's spec (it hard-codes ImageNet's mean/std), or None."""
    same = np.array_equal(np.asarray(mean, np.float32), IMAGENET_MEAN) and np.array_equal(
        np.asarray(std, np.float32), IMAGENET_STD
    )
    if same:
        return None

    def text(values: Sequence[float]) -> str:
        return "({})".format(", ".join("{:.4g}".format(float(v)) for v in values))

    return "jetson-inference's imagenet hard-codes mean {} and std {}; the model was trained with {} and {}".format(
        text(IMAGENET_MEAN), text(IMAGENET_STD), text(mean), text(std)
    )


@dataclass(frozen=True)
class Placement:
    """Where nvinfer puts a frame: the region it reads (from the top-left corner) and the rectangle it fills."""

    source_width: int
    source_height: int
    left: int
    top: int
    width: int
    height: int


def nvinfer_placement(
    frame_width: int, frame_height: int, net_width: int, net_height: int, scaling: NvinferScaling
) -> Placement:
    """get_converted_buffer() for a full frame: even source size, destination size and offsets."""
    source_width, source_height = frame_width & ~1, frame_height & ~1  # GST_ROUND_DOWN_2
    if source_width == 0 or source_height == 0:
        raise DataError(
            "a {}x{} frame is too small for nvinfer (it reads an even width and height)".format(
                frame_width, frame_height
            )
        )
    width, height, left, top = net_width, net_height, 0, 0
    if scaling.maintain_aspect_ratio:
        fit_height = net_width * source_height / float(source_width)  # C: unsigned product, then double division
        fit_width = net_height * source_width / float(source_height)
        if fit_height <= net_height:
            width, height = net_width, int(fit_height)
        else:
            width, height = int(fit_width), net_height
        if scaling.symmetric_padding:
            left, top = (net_width - width) // 2, (net_height - height) // 2
    if width == 0 or height == 0:
        raise DataError(
            "a {}x{} frame letterboxes to an empty {}x{} rectangle in nvinfer".format(
                frame_width, frame_height, width, height
            )
        )
    return Placement(source_width, source_height, left, top, width, height)


def resample(frame: np.ndarray, width: int, height: int, interpolation: str = NVINFER_DEFAULT_FILTER) -> np.ndarray:
    """uint8 HWC -> (height, width) sampled at pixel centres: nearest, or bilinear without antialiasing (edges
    clamped). The stand-in for NvBufSurfTransform's scaling, whose exact kernel is not public."""
    if interpolation not in NVINFER_SCALING_FILTERS:
        raise ConfigError("interpolation must be one of {}".format(", ".join(NVINFER_SCALING_FILTERS)))
    source_height, source_width = frame.shape[:2]
    if interpolation == "nearest":
        rows = np.minimum(((np.arange(height) + 0.5) * source_height / height).astype(np.int64), source_height - 1)
        cols = np.minimum(((np.arange(width) + 0.5) * source_width / width).astype(np.int64), source_width - 1)
        return np.ascontiguousarray(frame[rows[:, None], cols[None, :]])
    row_lo, row_hi, row_w = _linear_taps(source_height, height)
    col_lo, col_hi, col_w = _linear_taps(source_width, width)
    pixels: np.ndarray = frame.astype(np.float64)
    rows = pixels[row_lo] * (1 - row_w)[:, None, None] + pixels[row_hi] * row_w[:, None, None]
    values = rows[:, col_lo] * (1 - col_w)[None, :, None] + rows[:, col_hi] * col_w[None, :, None]
    return np.clip(np.floor(values + 0.5), 0, 255).astype(np.uint8)


def _linear_taps(source: int, target: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lower and upper source index and the upper weight of each output position (half-pixel centres)."""
    position = np.clip((np.arange(target) + 0.5) * source / target - 0.5, 0, source - 1)
    low = np.floor(position).astype(np.int64)
    return low, np.minimum(low + 1, source - 1), position - low


def nvinfer_scale(
    frame: np.ndarray,
    width: int,
    height: int,
    scaling: NvinferScaling,
    interpolation: str = NVINFER_DEFAULT_FILTER,
) -> np.ndarray:
    """uint8 (H, W, 3) frame -> (height, width, 3) network input pixels as nvinfer lays them out (black padding)."""
    place = nvinfer_placement(frame.shape[1], frame.shape[0], width, height, scaling)
    out = np.zeros((height, width) + frame.shape[2:], dtype=np.uint8)
    region = frame[: place.source_height, : place.source_width]
    out[place.top : place.top + place.height, place.left : place.left + place.width] = resample(
        region, place.width, place.height, interpolation
    )
    return out


def device_pixels(frame: np.ndarray, geometry: str, size: int) -> np.ndarray:
    """uint8 HWC frame -> (size, size, 3) input pixels of a consumer geometry (not ``center-crop``, which
    ``edgetl.contracts.preprocess`` computes with the spec's resize)."""
    if geometry == IMAGENET_STRETCH:
        return imagenet_stretch(frame, size, size)
    if geometry in NVINFER_SCALING:
        return nvinfer_scale(frame, size, size, NVINFER_SCALING[geometry])
    raise ConfigError("{!r} is not a consumer geometry; choose from {}".format(geometry, ", ".join(GEOMETRIES[1:])))
