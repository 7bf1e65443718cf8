"""Deployment geometry against index formulas written from the consumers' sources.

- jetson-inference ``c/tensorConvert.cu`` (gpuTensorNormMean): ``scale = make_float2(float(inputWidth) /
  float(outputWidth), ...)``, ``dx = ((float)x * scale.x)`` stored in an int, and ``((px * multiplier + 0)
  - mean) / std`` with ``multiplier = (1.0f - 0.0f) / 255.0f``; ``c/imageNet.cpp`` passes ImageNet's mean/std.
- DeepStream ``gstnvinfer.cpp`` (get_converted_buffer): GST_ROUND_DOWN_2 of the frame size, ``hdest =
  dest_frame->width * src_height / (double)src_width`` (and wdest), ``dest_height = hdest`` into a guint,
  offsets ``(W - dest_width) / 2`` only with symmetric-padding, black (0) padding.

float32 is emulated with ``struct``: a float32 operation equals the double operation rounded to float32 (a
double has more than 2 x 24 + 2 bits, so the double rounding is exact for +, -, *, /).
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgetl.contracts import geometry as g
from edgetl.contracts.preprocess import PreprocessSpec, eval_array, geometry_pixels, load_rgb
from edgetl.errors import ConfigError, DataError


def f32(value: float) -> float:
    return struct.unpack("f", struct.pack("f", value))[0]


def tensor_convert_index(source: int, target: int, x: int) -> int:
    """``const int dx = ((float)x * scale.x)`` with ``scale.x = float(inputWidth) / float(outputWidth)``."""
    scale = f32(f32(source) / f32(target))
    return int(f32(f32(x) * scale))  # C float -> int conversion truncates


SIZES = list(range(1, 700)) + [720, 1080, 1280, 1920, 2160, 3024, 4032]


@pytest.mark.parametrize("target", [224, 299, 256, 7, 1])
def test_imagenet_indices_equal_tensor_convert_float32_formula(target: int) -> None:
    for source in SIZES:
        expected = [tensor_convert_index(source, target, x) for x in range(target)]
        assert g.imagenet_source_index(source, target).tolist() == expected, (source, target)


def test_float32_matters_exact_floor_would_differ() -> None:
    """The float32 product rounds: for 248 -> 224 six columns differ from the exact floor(x * 248 / 224)."""
    ours = g.imagenet_source_index(248, 224)
    exact = np.array([(x * 248) // 224 for x in range(224)])
    assert int((ours != exact).sum()) == 6


def test_imagenet_stretch_reads_the_formula_pixels_of_the_whole_frame() -> None:
    frame = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    out = g.imagenet_stretch(frame, 224, 224)
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8
    for y in range(224):
        row = tensor_convert_index(37, 224, y)
        for x in range(0, 224, 7):
            assert (out[y, x] == frame[row, tensor_convert_index(53, 224, x)]).all()
    assert (out[0, 0] == frame[0, 0]).all()  # no crop: the frame's corner is the input's corner


def test_imagenet_normalisation_equals_tensor_convert_in_float32() -> None:
    assert g.IMAGENET_MEAN.tolist() == [f32(0.485), f32(0.456), f32(0.406)]  # imageNet.cpp's make_float3 literals
    assert g.IMAGENET_STD.tolist() == [f32(0.229), f32(0.224), f32(0.225)]
    multiplier = f32(f32(1.0 - 0.0) / 255.0)
    pixels = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=2)
    pixels[..., 1] = pixels[..., 1][::-1]
    out = g.imagenet_normalize(pixels)
    assert out.shape == (3, 16, 16) and out.dtype == np.float32
    for c in range(3):
        mean, std = g.IMAGENET_MEAN[c].item(), g.IMAGENET_STD[c].item()
        for y in range(16):
            for x in range(16):
                value = f32(f32(f32(float(pixels[y, x, c]) * multiplier) - mean) / std)
                assert out[c, y, x].item() == value


def test_imagenet_mismatch_names_both_normalisations() -> None:
    assert g.imagenet_mismatch((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)) is None
    assert "hard-codes" in g.imagenet_mismatch((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def nvinfer_formula(frame_w: int, frame_h: int, net_w: int, net_h: int, keep: bool, symmetric: bool) -> tuple:
    """get_converted_buffer() transcribed: guint arithmetic, double ratios, truncation into guint."""
    src_w, src_h = frame_w - frame_w % 2, frame_h - frame_h % 2  # GST_ROUND_DOWN_2
    offset_left = offset_top = 0
    if keep:
        hdest = (net_w * src_h) / float(src_w)  # dest_frame->width * src_height / (double) src_width
        wdest = (net_h * src_w) / float(src_h)
        if hdest <= net_h:
            dest_w, dest_h = net_w, int(hdest)
        else:
            dest_w, dest_h = int(wdest), net_h
        if symmetric:
            offset_left, offset_top = (net_w - dest_w) // 2, (net_h - dest_h) // 2
    else:
        dest_w, dest_h = net_w, net_h
    return src_w, src_h, offset_left, offset_top, dest_w, dest_h


@pytest.mark.parametrize("geometry", sorted(g.NVINFER_SCALING))
def test_nvinfer_placement_equals_gstnvinfer_formulas(geometry: str) -> None:
    scaling = g.NVINFER_SCALING[geometry]
    for frame_w in list(range(2, 400, 7)) + [640, 1280, 1920, 3840]:
        for frame_h in list(range(2, 400, 11)) + [480, 720, 1080, 2160]:
            for net in ((224, 224), (299, 299), (320, 192)):
                expected = nvinfer_formula(
                    frame_w, frame_h, *net, scaling.maintain_aspect_ratio, scaling.symmetric_padding
                )
                if 0 in expected[4:]:
                    with pytest.raises(DataError):
                        g.nvinfer_placement(frame_w, frame_h, *net, scaling)
                    continue
                place = g.nvinfer_placement(frame_w, frame_h, *net, scaling)
                assert (place.source_width, place.source_height, place.left, place.top, place.width, place.height) == (
                    expected
                ), (frame_w, frame_h, net)


def test_nvinfer_stretch_drops_an_odd_last_column_and_row() -> None:
    """A 225 x 225 frame is read as 224 x 224 (even size), which fits a 224 network without scaling."""
    frame = np.random.default_rng(1).integers(0, 256, (225, 225, 3), dtype=np.uint8)
    for interpolation in g.NVINFER_SCALING_FILTERS:
        out = g.nvinfer_scale(frame, 224, 224, g.NVINFER_SCALING["nvinfer-stretch"], interpolation)
        assert (out == frame[:224, :224]).all()


@pytest.mark.parametrize("geometry, top", [("nvinfer-letterbox", 0), ("nvinfer-letterbox-symmetric", 56)])
def test_nvinfer_letterbox_places_the_frame_and_pads_black(geometry: str, top: int) -> None:
    blocks = np.random.default_rng(2).integers(0, 256, (112, 224, 3), dtype=np.uint8)
    frame = blocks.repeat(2, axis=0).repeat(2, axis=1)  # 448 x 224, constant 2 x 2 blocks
    out = g.nvinfer_scale(frame, 224, 224, g.NVINFER_SCALING[geometry], "bilinear")
    assert (out[top : top + 112] == blocks).all()  # a 2x downscale of constant blocks is exact
    assert not out[:top].any() and not out[top + 112 :].any()


def test_device_pixels_dispatch_and_names() -> None:
    frame = np.zeros((30, 40, 3), np.uint8)
    assert g.device_pixels(frame, "imagenet-stretch", 16).shape == (16, 16, 3)
    with pytest.raises(ConfigError, match="not a consumer geometry"):
        g.device_pixels(frame, "center-crop", 16)
    with pytest.raises(ConfigError, match="geometry must be one of"):
        PreprocessSpec(geometry="stretch")


def test_spec_carries_its_geometry_and_old_files_read_as_center_crop(tmp_path: Path) -> None:
    spec = PreprocessSpec(geometry="nvinfer-letterbox")
    spec.save(tmp_path / "preprocess.json")
    assert PreprocessSpec.load(tmp_path / "preprocess.json") == spec
    (tmp_path / "old.json").write_text('{"input_size": 224, "resize_size": 256, "mean": [0.485, 0.456, 0.406], '
                                       '"std": [0.229, 0.224, 0.225], "interpolation": "bilinear"}')  # fmt: skip
    assert PreprocessSpec.load(tmp_path / "old.json").geometry == "center-crop"


def test_eval_array_follows_the_spec_geometry() -> None:
    frame = np.random.default_rng(3).integers(0, 256, (60, 90, 3), dtype=np.uint8)
    spec = PreprocessSpec(input_size=32, resize_size=36, geometry="imagenet-stretch")
    pixels = geometry_pixels(Image.fromarray(frame), spec)
    assert (pixels == g.imagenet_stretch(frame, 32, 32)).all()
    assert eval_array(Image.fromarray(frame), spec).shape == (3, 32, 32)


def test_device_decoder_ignores_exif_and_drops_alpha(tmp_path: Path) -> None:
    pixels = np.random.default_rng(4).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    Image.fromarray(pixels).save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    assert load_rgb(tmp_path / "rotated.jpg").size == (20, 30)  # edgetl applies the orientation
    assert load_rgb(tmp_path / "rotated.jpg", device_decoder=True).size == (30, 20)  # stb_image does not
    rgba = np.dstack([pixels, np.zeros((20, 30), np.uint8)])  # fully transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    assert (np.asarray(load_rgb(tmp_path / "alpha.png")) == 255).all()  # composited on white
    assert (np.asarray(load_rgb(tmp_path / "alpha.png", device_decoder=True)) == pixels).all()  # alpha dropped
