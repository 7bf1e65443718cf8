"""Contract fakes of ``tensorrt`` and cuda-python's runtime: exactly the calls edgetl makes, with each
supported version's signatures and return conventions where they differ. Never a source of figures.

Sources (NVIDIA/TensorRT python/src/infer/pyCore.cpp on release/8.5, 8.6, 10.3, 10.16):
- 8.5+ has the name-based tensor API (``set_input_shape`` -> bool, ``get_tensor_profile_shape``,
  ``execute_async_v3``); 8.x also keeps the deprecated binding API (``set_binding_shape`` -> bool),
  which 10.0 removed. ``IProgressMonitor`` exists from 10.0.
- ``set_input_shape`` returns False for a shape outside the optimisation profile and leaves the
  previous shape in place; ``create_execution_context`` and ``deserialize_cuda_engine`` return None
  on failure (TensorRT logs why). cuda-python: ``cuda.cudart`` before 12.6.1, ``cuda.bindings.runtime`` after.

The fake "engine" is JSON: input/output names, input shape (batch -1 when dynamic), classes, profile.
It computes ``logits[i, k] = mean(input[i]) + k`` so tests can check every row comes back in order.
"""

from __future__ import annotations

import ctypes
import enum
import json
import sys
import types
from typing import Any, Dict, List, Optional

import numpy as np

VERSIONS = {"8.5": "8.5.2.2", "8.6": "8.6.2.3", "10.3": "10.3.0.30"}


class _Severity(enum.IntEnum):
    INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)


class ILogger:
    Severity = _Severity

    def __init__(self) -> None:
        pass


class Logger(ILogger):
    WARNING = _Severity.WARNING

    def __init__(self, severity: Any = _Severity.WARNING) -> None:
        ILogger.__init__(self)


TensorIOMode = enum.Enum("TensorIOMode", "INPUT OUTPUT")
DataType = enum.Enum("DataType", "FLOAT HALF")
float32 = DataType.FLOAT  # tensorrt's alias of DataType.FLOAT
MemoryPoolType = enum.Enum("MemoryPoolType", "WORKSPACE")
BuilderFlag = enum.Enum("BuilderFlag", "FP16 INT8 GPU_FALLBACK OBEY_PRECISION_CONSTRAINTS")
DeviceType = enum.Enum("DeviceType", "GPU DLA")


class IInt8EntropyCalibrator2:
    def __init__(self) -> None:
        pass


class NetworkDefinitionCreationFlag(enum.IntEnum):
    EXPLICIT_BATCH = 0


def _version() -> str:
    return sys.modules["tensorrt"].__version__


def nptype(dtype: Any) -> Any:
    return np.float32


class Context:
    def __init__(self, engine: "Engine") -> None:
        self.engine, self.shape, self.addresses = engine, None, {}  # type: Any, Optional[tuple], Dict[str, int]

    def set_input_shape(self, name: str, shape: Any) -> bool:
        spec, shape = self.engine.spec, tuple(int(v) for v in shape)
        low, _, high = spec["profile"] or [spec["shape"][0]] * 3
        if name != spec["input"] or shape[1:] != tuple(spec["shape"][1:]) or not low <= shape[0] <= high:
            return False  # the previous shape stays
        self.shape = shape
        return True

    def get_tensor_shape(self, name: str) -> tuple:
        batch = -1 if self.shape is None else self.shape[0]
        return (
            (batch,) + tuple(self.engine.spec["shape"][1:])
            if name == self.engine.spec["input"]
            else (batch, self.engine.spec["classes"])
        )

    def set_tensor_address(self, name: str, pointer: int) -> bool:
        self.addresses[name] = int(pointer)
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        spec = self.engine.spec
        if self.shape is None or set(self.addresses) != {spec["input"], spec["output"]}:
            return False
        count = int(np.prod(self.shape))
        data = np.frombuffer((ctypes.c_float * count).from_address(self.addresses[spec["input"]]), np.float32)
        logits = data.reshape(self.shape[0], -1).mean(axis=1)[:, None] + np.arange(spec["classes"], dtype=np.float32)
        out = logits.astype(np.float32)
        ctypes.memmove(self.addresses[spec["output"]], out.ctypes.data, out.nbytes)
        return True


class Context8(Context):
    """TensorRT 8.x keeps the deprecated binding API next to the tensor API."""

    def set_binding_shape(self, binding: int, shape: Any) -> bool:
        return self.set_input_shape(self.engine.get_tensor_name(binding), shape)


class Engine:
    def __init__(self, spec: Dict[str, Any], context_class: type) -> None:
        self.spec, self.context_class = spec, context_class
        self.num_io_tensors = 2

    def get_tensor_name(self, index: int) -> str:
        return (self.spec["input"], self.spec["output"])[index]

    def get_tensor_mode(self, name: str) -> Any:
        return TensorIOMode.INPUT if name == self.spec["input"] else TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name: str) -> Any:
        return DataType.FLOAT

    def get_tensor_shape(self, name: str) -> tuple:
        batch = self.spec["shape"][0]
        return tuple(self.spec["shape"]) if name == self.spec["input"] else (batch, self.spec["classes"])

    def get_tensor_profile_shape(self, name: str, profile_index: int) -> List[tuple]:
        return [(b,) + tuple(self.spec["shape"][1:]) for b in self.spec["profile"]]

    def create_execution_context(self) -> Optional[Context]:
        return None if self.spec.get("out_of_memory") else self.context_class(self)


class Runtime:
    def __init__(self, logger: Any) -> None:
        self.context_class = Context8 if _version().startswith("8.") else Context
        self.DLA_core = -1

    def deserialize_cuda_engine(self, data: bytes) -> Optional[Engine]:
        try:
            engine = Engine(json.loads(bytes(data)), self.context_class)
        except ValueError:
            return None
        engine.runtime_dla_core = self.DLA_core  # recorded: a DLA engine is run on the runtime's DLA core
        return engine


class Layer:
    """ILayer's name and precision; ``precision_is_set`` as ILayer.precision_is_set (True once assigned)."""

    def __init__(self, name: str) -> None:
        self.name, self._precision, self.precision_is_set = name, DataType.FLOAT, False

    @property
    def precision(self) -> Any:
        return self._precision

    @precision.setter
    def precision(self, value: Any) -> None:
        self._precision, self.precision_is_set = value, True


class Network:
    def __init__(self, flags: int) -> None:
        self.flags, self.spec = flags, None  # type: int, Optional[Dict[str, Any]]
        self.layers = []  # type: List[Layer]

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def get_layer(self, index: int) -> Layer:
        return self.layers[index]


class OnnxParser:
    num_errors = 0

    def __init__(self, network: Network, logger: Any) -> None:
        self.network = network

    def parse_from_file(self, path: str) -> bool:
        import onnx

        explicit = 1 << int(NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        if _version().startswith("8.") and not self.network.flags & explicit:
            return False  # 8.x: the ONNX parser needs an explicit-batch network
        graph = onnx.load(path, load_external_data=False).graph
        dims = [d.dim_value if d.dim_value > 0 else -1 for d in graph.input[0].type.tensor_type.shape.dim]
        classes = graph.output[0].type.tensor_type.shape.dim[-1].dim_value
        # one layer per node, named after it (onnx-tensorrt ImporterContext::registerLayer); none for Constant
        self.network.layers = [Layer(node.name) for node in graph.node if node.op_type != "Constant"]
        self.network.spec = {
            "input": graph.input[0].name,
            "output": graph.output[0].name,
            "shape": dims,
            "classes": classes,
            "profile": None,
        }
        return True


class Profile:
    def __init__(self) -> None:
        self.shapes = {}  # type: Dict[str, tuple]

    def set_shape(self, name: str, min: Any, opt: Any, max: Any) -> None:  # noqa: A002 (TensorRT's names)
        self.shapes[name] = (tuple(min), tuple(opt), tuple(max))


class TimingCache:
    def serialize(self) -> bytes:
        return b"fake timing cache"


class BuilderConfig:
    def __init__(self) -> None:
        self.profiles, self.flags, self.pools, self.progress_monitor = [], set(), {}, None
        self.default_device_type, self.DLA_core, self.int8_calibrator = DeviceType.GPU, -1, None

    def set_memory_pool_limit(self, pool: Any, size: int) -> None:
        self.pools[pool] = size

    def set_flag(self, flag: Any) -> None:
        self.flags.add(flag)

    def add_optimization_profile(self, profile: Profile) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def create_timing_cache(self, data: bytes) -> TimingCache:
        return TimingCache()

    def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
        return True

    def get_timing_cache(self) -> TimingCache:
        return TimingCache()


class Builder:
    def __init__(self, logger: Any) -> None:
        self.logger = logger

    def create_network(self, flags: int = 0) -> Network:
        return Network(flags)

    def create_builder_config(self) -> BuilderConfig:
        return BuilderConfig()

    def create_optimization_profile(self) -> Profile:
        return Profile()

    def build_serialized_network(self, network: Network, config: BuilderConfig) -> Optional[bytes]:
        """None (as TensorRT) when a dynamic input has no profile or a profile contradicts the network, or
        when a calibrator's cache names another TensorRT release (TensorRT would then calibrate, with no data)."""
        spec = dict(network.spec)
        if config.int8_calibrator is not None:
            header = bytes(config.int8_calibrator.read_calibration_cache()).decode().splitlines()[0]
            parts = [int(p) for p in _version().split(".")[:3]]
            number = parts[0] * (10000 if parts[0] >= 10 else 1000) + parts[1] * 100 + parts[2]
            if header != "TRT-{}-EntropyCalibration2".format(number):
                self.logger.log(_Severity.ERROR, "Calibration table does not match calibrator algorithm type")
                return None
            spec["calibration"] = header
        if config.default_device_type == DeviceType.DLA:
            spec["dla_core"] = config.DLA_core
        spec["fp32_layers"] = [
            layer.name for layer in network.layers if layer.precision_is_set and layer.precision == DataType.FLOAT
        ]
        spec["obey_precision_constraints"] = BuilderFlag.OBEY_PRECISION_CONSTRAINTS in config.flags
        dynamic = spec["shape"][0] == -1
        if dynamic != bool(config.profiles):
            self.logger.log(_Severity.ERROR, "a dynamic input needs exactly one optimisation profile")
            return None
        if dynamic:
            low, opt, high = config.profiles[0].shapes[spec["input"]]
            if any(tuple(s[1:]) != tuple(spec["shape"][1:]) for s in (low, opt, high)):
                return None
            spec["profile"] = [low[0], opt[0], high[0]]
        return json.dumps(spec).encode()


class IProgressMonitor:  # TensorRT >= 10
    def __init__(self) -> None:
        pass


def make_tensorrt(version: str) -> types.ModuleType:
    """A ``tensorrt`` module as TensorRT ``version`` (a key of VERSIONS) presents it."""
    module = types.ModuleType("tensorrt")
    names = (
        "ILogger",
        "Logger",
        "TensorIOMode",
        "DataType",
        "MemoryPoolType",
        "BuilderFlag",
        "DeviceType",
        "IInt8EntropyCalibrator2",
        "NetworkDefinitionCreationFlag",
        "nptype",
        "float32",
        "Runtime",
        "OnnxParser",
        "Builder",
    )
    for name in names:
        setattr(module, name, globals()[name])
    if not version.startswith("8."):
        module.IProgressMonitor = IProgressMonitor
    module.__version__ = VERSIONS[version]
    return module


class _Memory:
    """cuda-python's runtime calls edgetl makes: ``(err, *values)`` tuples, host memory as device memory."""

    cudaError_t = enum.IntEnum("cudaError_t", "cudaSuccess cudaErrorMemoryAllocation", start=0)
    cudaMemcpyKind = enum.Enum("cudaMemcpyKind", "cudaMemcpyHostToDevice cudaMemcpyDeviceToHost")

    def __init__(self) -> None:
        self.buffers = {}  # type: Dict[int, Any]
        self.ok = self.cudaError_t.cudaSuccess

    def cudaGetErrorName(self, err: Any) -> tuple:
        return self.ok, err.name.encode()

    def cudaGetDeviceProperties(self, device: int) -> tuple:
        return self.ok, types.SimpleNamespace(name=b"Orin", major=8, minor=7)

    def cudaMalloc(self, nbytes: int) -> tuple:
        buffer = ctypes.create_string_buffer(max(1, nbytes))
        self.buffers[ctypes.addressof(buffer)] = buffer
        return self.ok, ctypes.addressof(buffer)

    def cudaFree(self, pointer: int) -> tuple:
        del self.buffers[int(pointer)]
        return (self.ok,)

    cudaMallocHost = cudaMalloc  # pinned host memory: host memory here too
    cudaFreeHost = cudaFree

    def cudaMemcpyAsync(self, dst: int, src: int, nbytes: int, kind: Any, stream: Any) -> tuple:
        ctypes.memmove(int(dst), int(src), nbytes)
        return (self.ok,)

    def cudaStreamCreate(self) -> tuple:
        return self.ok, 1

    def cudaEventCreate(self) -> tuple:
        return self.ok, 2

    def cudaEventElapsedTime(self, start: Any, end: Any) -> tuple:
        return self.ok, 0.0

    def __getattr__(self, name: str) -> Any:  # record/synchronize/destroy: succeed
        if name in ("cudaEventRecord", "cudaStreamSynchronize", "cudaEventDestroy", "cudaStreamDestroy"):
            return lambda *args: (self.ok,)
        raise AttributeError(name)


def install(monkeypatch: Any, version: str) -> types.ModuleType:
    """Put the fakes of TensorRT ``version`` into sys.modules; JetPack 5's 8.5 with the old ``cuda.cudart``."""
    monkeypatch.setitem(sys.modules, "tensorrt", make_tensorrt(version))
    runtime = _Memory()
    cuda = types.ModuleType("cuda")  # stands in for any real cuda-python; None entries make imports fail
    monkeypatch.setitem(sys.modules, "cuda", cuda)
    if version == "8.5":  # cuda-python 11.x: cuda.cudart, no cuda.bindings
        cuda.cudart = runtime
        monkeypatch.setitem(sys.modules, "cuda.cudart", runtime)
        for name in ("cuda.bindings", "cuda.bindings.runtime", "cuda.bindings.utils"):
            monkeypatch.setitem(sys.modules, name, None)
    else:  # cuda-bindings >= 12.6.1: runtime and get_cuda_native_handle
        cuda.bindings = types.ModuleType("cuda.bindings")
        cuda.bindings.runtime = runtime
        cuda.bindings.utils = types.SimpleNamespace(get_cuda_native_handle=int)
        monkeypatch.setitem(sys.modules, "cuda.bindings", cuda.bindings)
        monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", runtime)
        monkeypatch.setitem(sys.modules, "cuda.bindings.utils", cuda.bindings.utils)
        monkeypatch.setitem(sys.modules, "cuda.cudart", None)
    return sys.modules["tensorrt"]
