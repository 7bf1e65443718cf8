"""The TensorRT calibration cache (format, the device-side header stamp) and DLA engine plans, without TensorRT."""

import shutil
import struct
import subprocess

import numpy as np
import pytest

from edgetl.contracts.engine_sidecar import DeviceInfo
from edgetl.errors import ConfigError
from edgetl.trt.calibration_cache import (
    format_cache,
    parse_cache,
    scale_hex,
    stamp_script_lines,
    stamped,
    tensorrt_version_number,
)
from edgetl.trt.plan import BatchProfile, build_script, make_sidecar, plan_engine, resolve_trt_release, trtexec_command

STATIC = (4, 3, 224, 224)


@pytest.mark.parametrize(
    "version, number", [("8.5.2.2", 8502), ("8.6.1", 8601), ("10.3.0.30", 100300), ("10.13.2", 101302), ("8.6", 8600)]
)
def test_version_number_is_nv_tensorrt_version(version, number):
    assert tensorrt_version_number(version) == number  # TRT-8601-... and TRT-100300-... as TensorRT writes them


def test_scales_are_big_endian_float32_bits():
    assert scale_hex(1.0) == "3f800000" and scale_hex(2.0) == "40000000"  # IEEE-754 bits, zero-padded
    assert scale_hex(0.0078125) == struct.pack(">f", 2.0**-7).hex() == "3c000000"


def test_cache_round_trips_float32_scales_bit_exactly():
    rng = np.random.default_rng(0)
    scales = {"input": 0.0207, "/conv/Conv_output_0": 1e-3}
    scales.update({"/t{}".format(i): float(v) for i, v in enumerate(rng.uniform(1e-5, 10, 50).astype(np.float32))})
    text = format_cache(scales, 8602)
    assert text.splitlines()[0] == "TRT-8602-EntropyCalibration2" and text.splitlines()[1] == "input: {:08x}".format(
        np.float32(0.0207).view(np.uint32)
    )
    version, parsed = parse_cache(text)
    assert version == 8602 and list(parsed) == list(scales)
    assert all(np.float32(parsed[k]).tobytes() == np.float32(v).tobytes() for k, v in scales.items())


@pytest.mark.parametrize(
    "text, message",
    [
        ("TRT-8601-MinMaxCalibration\na: 3f800000\n", "EntropyCalibration2"),
        ("a: 3f800000\n", "header"),
        ("TRT-8601-EntropyCalibration2\na 3f800000\n", "line 2"),
        ("TRT-8601-EntropyCalibration2\na: 3f80000x\n", "line 2"),
        ("TRT-8601-EntropyCalibration2\na: 3f800000\na: 3f800000\n", "line 3"),
    ],
)
def test_a_malformed_cache_names_its_bad_line(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_cache(text)


def test_names_and_scales_a_cache_cannot_hold_are_refused():
    with pytest.raises(ConfigError, match="cannot be written"):
        format_cache({"a: b": 1.0}, 8601)
    with pytest.raises(ConfigError, match="must be > 0"):
        format_cache({"a": 0.0}, 8601)


def test_stamped_sets_the_header_only():
    text = format_cache({"input": 0.5}, 0)
    assert stamped(text, 100300) == "TRT-100300-EntropyCalibration2\ninput: 3f000000\n"


# NvInferVersion.h as JetPack 6.1 installs it (NVIDIA/TensorRT include/NvInferVersion.h, release/10.3)
NVINFER_VERSION_H = """#ifndef NV_INFER_VERSION_H
#define NV_INFER_VERSION_H

#define NV_TENSORRT_MAJOR 10 //!< TensorRT major version.
#define NV_TENSORRT_MINOR 3 //!< TensorRT minor version.
#define NV_TENSORRT_PATCH 0 //!< TensorRT patch version.
#define NV_TENSORRT_BUILD 26 //!< TensorRT build number.
"""


# NvInferVersion.h of TensorRT 10.11, whose NV_TENSORRT_* macros name TRT_*_ENTERPRISE macros (NVIDIA/TensorRT
# include/NvInferVersion.h at commit 9255eb39e6642787828a4c1f7fc1d09fe004e7a2, "TensorRT 10.11 release updates";
# 10.12 to 11.1 define them the same way), from its include guard on.
NVINFER_VERSION_H_10_11 = """#ifndef NV_INFER_VERSION_H
#define NV_INFER_VERSION_H

#define TRT_MAJOR_ENTERPRISE 10
#define TRT_MINOR_ENTERPRISE 11
#define TRT_PATCH_ENTERPRISE 0
#define TRT_BUILD_ENTERPRISE 33
#define NV_TENSORRT_MAJOR TRT_MAJOR_ENTERPRISE //!< TensorRT major version.
#define NV_TENSORRT_MINOR TRT_MINOR_ENTERPRISE //!< TensorRT minor version.
#define NV_TENSORRT_PATCH TRT_PATCH_ENTERPRISE //!< TensorRT patch version.
#define NV_TENSORRT_BUILD TRT_BUILD_ENTERPRISE //!< TensorRT build number.

#define NV_TENSORRT_LWS_MAJOR 0 //!< TensorRT LWS major version.
#define NV_TENSORRT_LWS_MINOR 0 //!< TensorRT LWS minor version.
#define NV_TENSORRT_LWS_PATCH 0 //!< TensorRT LWS patch version.

#define NV_TENSORRT_RELEASE_TYPE_EARLY_ACCESS 0         //!< An early access release
#define NV_TENSORRT_RELEASE_TYPE_RELEASE_CANDIDATE 1    //!< A release candidate
#define NV_TENSORRT_RELEASE_TYPE_GENERAL_AVAILABILITY 2 //!< A final release

#define NV_TENSORRT_RELEASE_TYPE NV_TENSORRT_RELEASE_TYPE_GENERAL_AVAILABILITY //!< TensorRT release type

#endif // NV_INFER_VERSION_H
"""


@pytest.mark.skipif(shutil.which("sh") is None or shutil.which("sed") is None, reason="needs sh and sed")
@pytest.mark.parametrize(
    "header, expected",
    [
        (NVINFER_VERSION_H, "100300"),
        (NVINFER_VERSION_H_10_11, "101100"),
        (NVINFER_VERSION_H.replace(" 10 ", " 8 ").replace("MINOR 3", "MINOR 5").replace("PATCH 0", "PATCH 2"), "8502"),
    ],
)
def test_the_device_script_stamps_the_header_from_nvinferversion_h(tmp_path, header, expected):
    (tmp_path / "NvInferVersion.h").write_text(header)
    (tmp_path / "calibration.cache").write_text(
        format_cache({"input": 0.5, "x": 0.25}, 100300 if expected == "8502" else 8601)
    )
    script = "\n".join(["set -e", 'cd "$(dirname "$0")"'] + stamp_script_lines(["calibration.cache"]))
    (tmp_path / "stamp.sh").write_text(script + "\n")
    env = {"PATH": "/usr/bin:/bin", "PYTHON": "false", "NVINFER_VERSION_H": str(tmp_path / "NvInferVersion.h")}
    subprocess.run(["sh", str(tmp_path / "stamp.sh")], check=True, env=env)  # PYTHON=false: no tensorrt module
    version, scales = parse_cache((tmp_path / "calibration.cache").read_text())
    assert str(version) == expected and scales == {"input": 0.5, "x": 0.25}


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs sh")
def test_the_device_script_stops_when_it_cannot_tell_the_version(tmp_path):
    (tmp_path / "calibration.cache").write_text(format_cache({"input": 0.5}, 8601))
    script = "\n".join(["set -e", 'cd "$(dirname "$0")"'] + stamp_script_lines(["calibration.cache"]))
    (tmp_path / "stamp.sh").write_text(script + "\n")
    env = {"PATH": "/usr/bin:/bin", "PYTHON": "false", "NVINFER_VERSION_H": str(tmp_path / "missing.h")}
    result = subprocess.run(["sh", str(tmp_path / "stamp.sh")], env=env, capture_output=True, text=True)
    assert result.returncode == 1 and "cannot tell this device's TensorRT version" in result.stderr
    assert parse_cache((tmp_path / "calibration.cache").read_text())[0] == 8601  # left as it was


# --- DLA -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["8.5", "8.6", "10.3"])
def test_dla_int8_is_the_fp32_onnx_with_the_calibration_cache_and_gpu_fallback(target):
    plan = plan_engine(resolve_trt_release(target), "int8", "input", "logits", STATIC, dla_core=1)
    assert (plan.onnx, plan.engine, plan.calibration_cache) == (
        "model.onnx",
        "model_int8_dla1.engine",
        "calibration.cache",
    )
    assert plan.builder_flags == ("INT8", "FP16", "GPU_FALLBACK") and plan.dla_core == 1
    args = trtexec_command(plan)
    assert {"--int8", "--fp16", "--calib=calibration.cache", "--useDLACore=1", "--allowGPUFallback"} <= set(args)
    sidecar = make_sidecar(plan, DeviceInfo("10.3.0.30", "Orin", "8.7"), "a", "b", "test")
    assert (sidecar["dla_core"], sidecar["gpu_fallback"], sidecar["calibration_cache"]) == (
        1,
        True,
        "calibration.cache",
    )


def test_dla_fp16_and_a_batch_profile_fixed_at_one_size():
    plan = plan_engine(
        resolve_trt_release("10.3"), "fp16", "input", "logits", (-1, 3, 224, 224), BatchProfile(4, 4, 4), dla_core=0
    )
    assert (
        plan.onnx == "model.onnx" and plan.calibration_cache is None and plan.builder_flags == ("FP16", "GPU_FALLBACK")
    )
    gpu = plan_engine(resolve_trt_release("10.3"), "int8", "input", "logits", STATIC)
    assert (gpu.onnx, gpu.engine, gpu.calibration_cache, gpu.dla_core) == (
        "model_int8.onnx",
        "model_int8.engine",
        None,
        None,
    )


@pytest.mark.parametrize(
    "target, precision, shape, profile, message",
    [
        ("10.x", "fp16", STATIC, None, "built by JetPack's TensorRT"),
        ("11.x", "int8", STATIC, None, "built by JetPack's TensorRT"),
        ("10.3", "fp32", STATIC, None, "a DLA runs fp16 or int8"),
        ("8.6", "fp16", (-1, 3, 224, 224), BatchProfile(1, 1, 8), "fixed batch"),
    ],
)
def test_dla_plans_that_cannot_be_built_are_refused(target, precision, shape, profile, message):
    with pytest.raises(ConfigError, match=message):
        plan_engine(resolve_trt_release(target), precision, "input", "logits", shape, profile, dla_core=0)


def test_build_script_stamps_the_cache_before_building_and_copies_the_engine(tmp_path):
    dla = plan_engine(resolve_trt_release("8.5"), "int8", "input", "logits", STATIC, dla_core=0)
    gpu = plan_engine(
        resolve_trt_release("8.5"), "fp16", "input", "logits", STATIC, also_write=("triton-trt/m_trt/1/model.plan",)
    )
    script = build_script([dla, gpu], resolve_trt_release("8.5"))
    assert script.index("sed -i") < script.index("--calib=calibration.cache")
    assert "mkdir -p triton-trt/m_trt/1 && cp model_fp16.engine triton-trt/m_trt/1/model.plan" in script
    (tmp_path / "build_engine.sh").write_text(script)
    assert subprocess.run(["sh", "-n", str(tmp_path / "build_engine.sh")]).returncode == 0
