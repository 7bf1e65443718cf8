"""One preprocessing spec per model, shared by training, evaluation, export and deployment.

The spec is written as ``preprocess.json`` into every run and bundle. Its ``geometry`` says how a frame
becomes the input the model was selected on: ``center-crop`` (the numpy/PIL path here, torch-free, equals
torchvision's ``Resize(resize_size) + CenterCrop(input_size) + ToTensor + Normalize`` to float precision)
or a consumer's exact geometry (``edgetl.contracts.geometry``).
Python 3.8 syntax: this module is part of the device runtime.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, Tuple

import numpy as np
from PIL import Image, ImageOps

from edgetl.contracts.geometry import CENTER_CROP, check_geometry, decoded_like_device, device_pixels
from edgetl.contracts.schema import is_int, is_number, is_str, list_of, read_json, record
from edgetl.core.deps import require
from edgetl.core.fileio import atomic_write_text
from edgetl.errors import ConfigError, DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Pillow >= 9.0: Image.Resampling only arrived in 9.1; Pillow sets these module-level names dynamically.
_PIL_INTERPOLATION = {
    "bilinear": Image.BILINEAR,  # type: ignore[attr-defined]
    "bicubic": Image.BICUBIC,  # type: ignore[attr-defined]
    "nearest": Image.NEAREST,  # type: ignore[attr-defined]
}
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


@dataclass(frozen=True)
class PreprocessSpec:
    """Input size, resize, crop and normalisation of a model."""

    input_size: int = 224
    resize_size: int = 256
    mean: Tuple[float, float, float] = IMAGENET_MEAN
    std: Tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"
    geometry: str = CENTER_CROP  # a name of edgetl.contracts.formats.GEOMETRIES

    def __post_init__(self) -> None:
        check_geometry(self.geometry)
        if self.interpolation not in _PIL_INTERPOLATION:
            raise ConfigError(
                "interpolation must be one of {}, got {!r}".format(sorted(_PIL_INTERPOLATION), self.interpolation)
            )
        if not 0 < self.input_size <= self.resize_size:
            raise ConfigError(
                "need 0 < input_size <= resize_size, got {} and {}".format(self.input_size, self.resize_size)
            )
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ConfigError("mean and std need 3 values each, std > 0")
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "PreprocessSpec":
        known = {
            k: data[k] for k in ("input_size", "resize_size", "mean", "std", "interpolation", "geometry") if k in data
        }
        return cls(**known)

    def save(self, path: Path) -> None:
        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> "PreprocessSpec":
        """Read ``preprocess.json``: every field but ``geometry`` (older runs lack it) must be there, so a
        truncated or hand-emptied file is a one-line error naming it, never a silent default."""
        data = read_json(Path(path), PREPROCESS_SCHEMA, ConfigError)
        try:
            return cls.from_dict(data)
        except ConfigError as exc:
            raise ConfigError("{} is malformed: {}".format(path, exc)) from None


_TRIPLE = list_of(is_number, length=3)
PREPROCESS_SCHEMA = record(
    {"input_size": is_int, "resize_size": is_int, "mean": _TRIPLE, "std": _TRIPLE, "interpolation": is_str},
    {"geometry": is_str},
)


def load_rgb(path: Path, device_decoder: bool = False) -> Image.Image:
    """Open any PIL-readable image as 8-bit RGB: EXIF orientation applied, alpha composited on white,
    grey/palette/CMYK converted, 16-bit scaled down. ``device_decoder``: as stb_image (jetson-inference) and
    video decoders deliver frames instead: no EXIF rotation, alpha dropped. Raises DataError for unreadable files."""
    try:
        with Image.open(path) as img:
            img.load()
            if device_decoder:
                return to_rgb(img.convert("RGBA").convert("RGB") if img.mode in ("RGBA", "LA", "PA", "P") else img)
            img = ImageOps.exif_transpose(img)
            return to_rgb(img)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataError("unreadable image {}: {}".format(path, exc)) from exc


def load_input(path: Path, spec: PreprocessSpec) -> Image.Image:
    """An image file decoded the way frames reach ``spec.geometry`` (see ``load_rgb``)."""
    return load_rgb(path, decoded_like_device(spec.geometry))


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert a PIL image of any mode to 8-bit RGB (see ``load_rgb``)."""
    if img.mode in _SIXTEEN_BIT_MODES:
        # By the mode's bit depth, never by the image's values: a dark frame and a bright one of the same scene
        # keep their relation. "I" counts as 16-bit: Pillow < 11 opens 16-bit PNGs as "I".
        values = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(np.clip(np.round(values / 257.0), 0, 255).astype(np.uint8), "L")
    elif img.mode == "F":
        img = Image.fromarray(np.clip(np.round(np.asarray(img)), 0, 255).astype(np.uint8), "L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB") if img.mode != "RGB" else img


def resized_size(width: int, height: int, short_side: int) -> Tuple[int, int]:
    """(width, height) after scaling the shorter side to ``short_side`` (torchvision's rule)."""
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(short_side * long / short)
    return (short_side, new_long) if width <= height else (new_long, short_side)


def center_crop_offsets(width: int, height: int, size: int) -> Tuple[int, int]:
    """(left, top) of a centred ``size`` x ``size`` crop (torchvision's CenterCrop rounding)."""
    return int(round((width - size) / 2.0)), int(round((height - size) / 2.0))


def resize_shorter_side(img: Image.Image, spec: PreprocessSpec) -> Image.Image:
    """The eval resize: shorter side to ``spec.resize_size`` with the spec's interpolation."""
    return img.resize(resized_size(img.width, img.height, spec.resize_size), _PIL_INTERPOLATION[spec.interpolation])


def resize_and_crop(img: Image.Image, spec: PreprocessSpec) -> Image.Image:
    """The ``center-crop`` geometry: shorter side to resize_size, then a centred input_size crop."""
    img = resize_shorter_side(img, spec)
    size = spec.input_size
    left, top = center_crop_offsets(img.width, img.height, size)
    return img.crop((left, top, left + size, top + size))


def normalize(pixels: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """uint8 HWC pixels -> normalised float32 CHW."""
    scaled = pixels.astype(np.float32) / np.float32(255.0)
    mean = np.asarray(spec.mean, dtype=np.float32)
    std = np.asarray(spec.std, dtype=np.float32)
    return np.ascontiguousarray(((scaled - mean) / std).transpose(2, 0, 1))


def geometry_pixels(img: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """The model's input pixels under ``spec.geometry``: RGB PIL image -> uint8 (input_size, input_size, 3)."""
    if spec.geometry == CENTER_CROP:
        return np.asarray(resize_and_crop(img, spec), dtype=np.uint8)
    return device_pixels(np.asarray(img, dtype=np.uint8), spec.geometry, spec.input_size)


def eval_array(img: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """The eval transform without torch: RGB PIL image -> float32 CHW array."""
    return normalize(geometry_pixels(to_rgb(img), spec), spec)


class GeometryTransform:
    """``geometry_pixels`` as a picklable PIL -> PIL transform (DataLoader workers)."""

    def __init__(self, spec: PreprocessSpec) -> None:
        self.spec = spec

    def __call__(self, img: Image.Image) -> Image.Image:
        return Image.fromarray(geometry_pixels(to_rgb(img), self.spec))


def torch_transforms(spec: PreprocessSpec, train: bool) -> Any:
    """The torchvision transform for training (RandomResizedCrop + flip) or evaluation (``spec.geometry``)."""
    T = require("torchvision.transforms")
    interpolation = T.InterpolationMode(spec.interpolation)
    if train:
        geometry = [T.RandomResizedCrop(spec.input_size, interpolation=interpolation), T.RandomHorizontalFlip()]
    elif spec.geometry != CENTER_CROP:
        geometry = [GeometryTransform(spec)]
    else:
        geometry = [T.Resize(spec.resize_size, interpolation=interpolation), T.CenterCrop(spec.input_size)]
    return T.Compose(geometry + [T.ToTensor(), T.Normalize(spec.mean, spec.std)])
