"""TensorRT engine runner: name-based I/O (``set_input_shape`` / ``set_tensor_address`` /
``execute_async_v3``, TensorRT >= 8.5) with device buffers from cuda-python.

The engine's sidecar is checked against the running TensorRT and GPU *before* deserialising,
so an engine from another device is refused with a rebuild hint instead of failing inside
TensorRT. tensorrt and cuda-python are imported lazily. Python 3.8 syntax.
"""

from __future__ import annotations

import ctypes
import json
import logging
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np

from edgetl.contracts.bundle import sidecar_file
from edgetl.contracts.engine_sidecar import DeviceInfo, rebuild_hint, sidecar_problems
from edgetl.core.deps import require
from edgetl.core.fileio import sha256_file
from edgetl.errors import CheckpointError, ConfigError, DependencyError
from edgetl.runtime.base import Runner, TensorMeta

log = logging.getLogger(__name__)


def cuda_runtime() -> Any:
    """cuda-python's runtime API: ``cuda.bindings.runtime`` (>= 12.6.1/11.8.4), else ``cuda.cudart`` (< 13)."""
    try:
        from cuda.bindings import runtime  # type: ignore

        return runtime
    except ImportError:
        return require("cuda.cudart")


def cuda_check(cudart: Any, result: Any) -> Any:
    """Unpack a cuda-python ``(err, *values)`` tuple, raising on an error code."""
    err, values = result[0], result[1:]
    if err != cudart.cudaError_t.cudaSuccess:
        raise RuntimeError("CUDA error {}".format(cudart.cudaGetErrorName(err)[1]))
    return values[0] if len(values) == 1 else (values or None)


def native_handle(obj: Any) -> int:
    """Integer handle of a cuda-python object (``int(obj)`` is deprecated in cuda-bindings 13)."""
    try:
        from cuda.bindings.utils import get_cuda_native_handle  # type: ignore

        return int(get_cuda_native_handle(obj))
    except ImportError:
        return int(obj)


def device_info(trt: Any, cudart: Any, device: int = 0) -> DeviceInfo:
    """The running TensorRT version and the GPU's name and compute capability."""
    prop = cuda_check(cudart, cudart.cudaGetDeviceProperties(device))
    name = prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
    return DeviceInfo(trt.__version__, name.rstrip("\x00"), "{}.{}".format(prop.major, prop.minor))


def installed_tensorrt_version() -> str:
    """The importable TensorRT's version: what an engine built here is for (``--trt-version``)."""
    return str(require("tensorrt").__version__)


def load_sidecar(engine: Path) -> Optional[Dict[str, Any]]:
    path = engine.with_name(sidecar_file(engine.name))
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        return {}


class TrtRunner(Runner):
    """A TensorRT engine; ``onnx_path`` (the ONNX it was built from) lets the check catch stale engines."""

    name = "tensorrt"

    def __init__(self, engine_path: Path, onnx_path: Optional[Path] = None) -> None:
        super().__init__()
        self.engine_path, self.onnx_path = Path(engine_path), onnx_path
        self.buffers = {}  # type: Dict[str, Any]  # device memory per tensor: (pointer, bytes)
        self.host = {}  # type: Dict[str, Any]  # pinned host staging per tensor: (pointer, bytes)

    def _activate(self) -> None:
        trt = require("tensorrt")
        self.cudart = cuda_runtime()
        sidecar = load_sidecar(self.engine_path)
        onnx_sha = sha256_file(self.onnx_path) if self.onnx_path is not None and self.onnx_path.is_file() else None
        try:
            device = device_info(trt, self.cudart)
        except RuntimeError as exc:
            raise DependencyError("TensorRT needs a usable CUDA GPU: {}".format(exc)) from exc
        problems = sidecar_problems(sidecar, device, sha256_file(self.engine_path), onnx_sha)
        if problems:
            precision = (sidecar or {}).get("precision", "fp16")
            raise CheckpointError(
                "refusing to load {}: {}; {}".format(
                    self.engine_path.name, "; ".join(problems), rebuild_hint(precision)
                )
            )
        self.logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(self.logger)
        dla_core = (sidecar or {}).get("dla_core")
        if dla_core is not None:  # a DLA engine runs on the core it was built for
            runtime.DLA_core = int(dla_core)
        self.engine = runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if self.engine is None:  # TensorRT logs the reason and returns None
            raise CheckpointError(
                "TensorRT could not deserialise {} (see its log above); {}".format(
                    self.engine_path.name, rebuild_hint((sidecar or {}).get("precision", "fp16"))
                )
            )
        self.context = self.engine.create_execution_context()
        if self.context is None:  # TensorRT logs the reason and returns None, mostly out of GPU memory
            self.engine = None
            raise DependencyError(
                "TensorRT could not create an execution context for {} (see its log above; "
                "usually out of GPU memory: close other GPU programs or build the engine with a "
                "smaller --max-batch)".format(self.engine_path.name)
            )
        self.stream = cuda_check(self.cudart, self.cudart.cudaStreamCreate())
        # CUDA events around copy-in / execute / copy-out: last_stages_ms splits each call as trtexec does
        self.events = [cuda_check(self.cudart, self.cudart.cudaEventCreate()) for _ in range(4)]
        self.last_stages_ms = None  # type: Optional[Dict[str, float]]
        self.tensors = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in self.tensors if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in self.tensors}

    def _deactivate(self) -> None:
        for pointer, _ in self.buffers.values():
            cuda_check(self.cudart, self.cudart.cudaFree(pointer))
        for pointer, _ in self.host.values():
            cuda_check(self.cudart, self.cudart.cudaFreeHost(pointer))
        self.buffers, self.host = {}, {}
        for event in self.events:
            cuda_check(self.cudart, self.cudart.cudaEventDestroy(event))
        cuda_check(self.cudart, self.cudart.cudaStreamDestroy(self.stream))
        self.context = self.engine = None

    def input_metadata(self) -> Dict[str, TensorMeta]:
        return {
            n: TensorMeta(tuple(d if d >= 0 else None for d in self.engine.get_tensor_shape(n)), self.dtypes[n])
            for n in self.inputs
        }

    def batch_range(self) -> Tuple[int, int]:
        """(min, max) batch of the first input: its optimisation profile, or its fixed batch."""
        name = self.inputs[0]
        batch = self.engine.get_tensor_shape(name)[0]
        if batch >= 0:
            return batch, batch
        low, _, high = self.engine.get_tensor_profile_shape(name, 0)
        return low[0], high[0]

    def _device_buffer(self, name: str, nbytes: int) -> int:
        pointer, size = self.buffers.get(name, (None, 0))
        if size < nbytes:
            if pointer is not None:
                cuda_check(self.cudart, self.cudart.cudaFree(pointer))
            pointer = cuda_check(self.cudart, self.cudart.cudaMalloc(nbytes))
            self.buffers[name] = (pointer, nbytes)
        return int(pointer)

    def _pinned(self, name: str, shape: Tuple[int, ...], dtype: Any) -> np.ndarray:
        """A page-locked host array for ``name`` (reused, grown as needed): asynchronous copies need
        pinned memory to overlap, as NVIDIA's samples allocate it; pageable memory is staged by the driver."""
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        pointer, size = self.host.get(name, (None, 0))
        if size < nbytes:
            if pointer is not None:
                cuda_check(self.cudart, self.cudart.cudaFreeHost(pointer))
            pointer = cuda_check(self.cudart, self.cudart.cudaMallocHost(max(1, nbytes)))
            self.host[name] = (pointer, max(1, nbytes))
        raw = (ctypes.c_uint8 * max(1, nbytes)).from_address(int(pointer))
        return np.frombuffer(raw, dtype=np.uint8, count=nbytes).view(dtype).reshape(shape)

    def _infer(self, feed: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        cudart, stream = self.cudart, self.stream
        copy_in, copy_out = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        cuda_check(cudart, cudart.cudaEventRecord(self.events[0], stream))
        for name in self.inputs:
            array = feed[name]
            if not self.context.set_input_shape(name, tuple(array.shape)):  # False outside the profile
                low, high = self.batch_range()
                raise ConfigError(
                    "{} takes a batch of {} to {} (its optimisation profile), got {} for {!r}; "
                    "use a batch in that range or rebuild the engine with 'edgetl build-engine "
                    "--min-batch/--max-batch'".format(self.engine_path.name, low, high, array.shape[0], name)
                )
            staged = self._pinned(name, array.shape, self.dtypes[name])
            np.copyto(staged, array)
            pointer = self._device_buffer(name, staged.nbytes)
            cuda_check(cudart, cudart.cudaMemcpyAsync(pointer, staged.ctypes.data, staged.nbytes, copy_in, stream))
            self.context.set_tensor_address(name, pointer)
        outputs = {}
        for name in self.tensors:
            if name in self.inputs:
                continue
            outputs[name] = self._pinned(name, tuple(self.context.get_tensor_shape(name)), self.dtypes[name])
            self.context.set_tensor_address(name, self._device_buffer(name, outputs[name].nbytes))
        cuda_check(cudart, cudart.cudaEventRecord(self.events[1], stream))
        if not self.context.execute_async_v3(native_handle(stream)):
            raise RuntimeError("TensorRT execute_async_v3 failed for {}".format(self.engine_path.name))
        cuda_check(cudart, cudart.cudaEventRecord(self.events[2], stream))
        for name, array in outputs.items():
            cuda_check(
                cudart, cudart.cudaMemcpyAsync(array.ctypes.data, self.buffers[name][0], array.nbytes, copy_out, stream)
            )
        cuda_check(cudart, cudart.cudaEventRecord(self.events[3], stream))
        cuda_check(cudart, cudart.cudaStreamSynchronize(stream))
        outputs = {name: array.copy() for name, array in outputs.items()}  # the pinned buffers are reused
        self.last_stages_ms = {
            stage: float(cuda_check(cudart, cudart.cudaEventElapsedTime(start, end)))
            for stage, start, end in zip(("h2d", "compute", "d2h"), self.events, self.events[1:])
        }
        return outputs
