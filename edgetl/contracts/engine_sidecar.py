"""The engine sidecar contract: the JSON written next to every TensorRT engine (by ``edgetl.trt``)
and checked before one is loaded (by ``edgetl.runtime.tensorrt``). Engines are tied to the
TensorRT version and GPU that built them, so the sidecar records both. Torch-free, Python 3.8."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

SIDECAR_FORMAT = "edgetl-engine-v1"


def version_tuple(version: str) -> Tuple[int, ...]:
    """``"10.3.0.30"`` -> ``(10, 3, 0, 30)``; non-numeric parts end the tuple."""
    parts = []
    for piece in str(version).split("."):
        if not piece.isdigit():
            break
        parts.append(int(piece))
    return tuple(parts)


@dataclass(frozen=True)
class DeviceInfo:
    """The running TensorRT and GPU, as engines depend on them."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # "8.7"


def sidecar_problems(
    sidecar: Optional[Dict[str, Any]], device: DeviceInfo, engine_sha256: str, onnx_sha256: Optional[str]
) -> List[str]:
    """Why an engine must not be loaded here (empty list: compatible).

    TensorRT rejects plans from another version (``deserialize_cuda_engine`` returns None) or
    another compute capability; a sidecar of another engine file, or an engine built from an
    ONNX that has since changed, would run the wrong model."""
    if sidecar is None:
        return ["it has no sidecar JSON, so its TensorRT version and GPU are unknown"]
    if sidecar.get("format") != SIDECAR_FORMAT:
        return ["its sidecar is not an edgetl engine sidecar ({})".format(SIDECAR_FORMAT)]
    problems = []
    built, running = version_tuple(sidecar.get("tensorrt_version", "")), version_tuple(device.tensorrt_version)
    if built[:3] != running[:3]:
        problems.append(
            "it was built with TensorRT {}, this device runs TensorRT {}".format(
                sidecar.get("tensorrt_version"), device.tensorrt_version
            )
        )
    if sidecar.get("compute_capability") != device.compute_capability:
        problems.append(
            "it was built for a {} (compute capability {}), this GPU is a {} (compute capability {})".format(
                sidecar.get("gpu_name"), sidecar.get("compute_capability"), device.gpu_name, device.compute_capability
            )
        )
    if sidecar.get("engine_sha256") != engine_sha256:
        problems.append("the engine file changed after its sidecar was written")
    if onnx_sha256 is not None and sidecar.get("onnx_sha256") != onnx_sha256:
        problems.append("it was built from an older {} than the one in the bundle".format(sidecar.get("onnx")))
    return problems


def sidecar_batch_range(sidecar: Optional[Dict[str, Any]]) -> Optional[Tuple[int, int]]:
    """(min, max) batch of an engine from its sidecar, to check options before loading it; None: unknown."""
    shapes, input_shape = (sidecar or {}).get("profile_shapes"), (sidecar or {}).get("input_shape")
    if shapes:
        return int(shapes["min"][0]), int(shapes["max"][0])
    if input_shape and int(input_shape[0]) > 0:
        return int(input_shape[0]), int(input_shape[0])
    return None


def rebuild_hint(precision: str) -> str:
    """How to rebuild an engine on the device that will run it."""
    return (
        "rebuild it on this device: run 'sh build_engine.sh' in the bundle folder, or "
        "'edgetl build-engine BUNDLE --precision {}'".format(precision)
    )
