"""ONNX Runtime backend (CPU, CUDA or TensorRT execution provider); onnxruntime is imported on activation."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

from edgetl.core.deps import require
from edgetl.errors import CheckpointError, ConfigError, DependencyError
from edgetl.runtime.base import Runner, TensorMeta
from edgetl.runtime.providers import CPU_PROVIDER, CUDA_PROVIDER, TENSORRT_PROVIDER

# OnnxRuntimeRunner's devices -> the providers a session asks for, in order
PROVIDERS = {
    "cpu": [CPU_PROVIDER],
    "cuda": [CUDA_PROVIDER, CPU_PROVIDER],
    "tensorrt": [TENSORRT_PROVIDER, CUDA_PROVIDER, CPU_PROVIDER],  # the ort-trt backend
}

log = logging.getLogger(__name__)


_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(uint8)": np.uint8,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int8)": np.int8,
}


class OnnxRuntimeRunner(Runner):
    """ONNX Runtime on the CPU (default), the CUDA or the TensorRT execution provider (``device="tensorrt"``:
    refused, not silently run on another provider, when the session does not start on TensorRT).

    ``optimize=False`` disables every graph optimisation: Q/DQ pairs then run as float
    quantize-dequantize arithmetic instead of fused integer kernels, a simulation of INT8 that does
    not depend on one CPU's instruction set (how the TensorRT form is judged)."""

    name = "onnxruntime"

    def __init__(
        self, path: Path, device: str = "cpu", threads: Optional[int] = None, spin: bool = True, optimize: bool = True
    ) -> None:
        super().__init__()
        if device not in PROVIDERS:
            raise ConfigError("ONNX Runtime device must be one of {}, got {!r}".format(", ".join(PROVIDERS), device))
        self.path, self.device, self.threads, self.spin = Path(path), device, threads, spin
        self.optimize = optimize
        self.session: Any = None

    def _activate(self) -> None:
        ort = require("onnxruntime")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if not self.optimize:
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        if self.threads:
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
        if not self.spin:  # idle threads sleep instead of spinning (no load left on cores others time)
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = PROVIDERS[self.device]
        if providers[0] not in ort.get_available_providers():
            raise DependencyError("this onnxruntime has no {}; install onnxruntime-gpu".format(providers[0]))
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            raise CheckpointError(
                "ONNX Runtime cannot load {}: {}".format(self.path, str(exc).splitlines()[0])
            ) from exc
        runs_on = self.session.get_providers()[0]
        if self.device == "tensorrt" and runs_on != TENSORRT_PROVIDER:
            self.session = None
            raise DependencyError(
                "ONNX Runtime's TensorRT provider did not start for {} (the session runs on {}): it needs the "
                "TensorRT and CUDA libraries this onnxruntime was built for; use --backend trt or onnx".format(
                    self.path.name, runs_on
                )
            )
        if self.device == "cuda" and CUDA_PROVIDER not in self.session.get_providers():
            log.warning("ONNX Runtime could not start its CUDA provider; running %s on the CPU", self.path.name)

    def _deactivate(self) -> None:
        self.session = None

    def input_metadata(self) -> Dict[str, TensorMeta]:
        return {
            i.name: TensorMeta(tuple(d if isinstance(d, int) else None for d in i.shape), _ORT_TYPES[i.type])
            for i in self.session.get_inputs()
        }

    def _infer(self, feed: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        names = [o.name for o in self.session.get_outputs()]
        return dict(zip(names, self.session.run(names, feed)))
