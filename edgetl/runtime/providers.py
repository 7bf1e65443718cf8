"""Which ONNX Runtime execution providers actually run here, tested with real sessions.

``get_available_providers()`` lists what the wheel was built with (onnxruntime-gpu lists TensorRT and CUDA on
a machine without either), and a session asked for a provider falls back to the CPU silently, so only
``get_providers()[0]`` of a real session says what runs. ``edgetl doctor`` reports every provider this way;
the ``ort-trt`` backend is offered only when its probe passes. Torch-free, Python 3.8.
"""

from __future__ import annotations

import contextlib
import io
import re
from typing import Any, Dict, Optional, Sequence

import numpy as np

from edgetl.core.deps import require

TENSORRT_PROVIDER = "TensorrtExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"


def tiny_onnx_model() -> bytes:
    """A one-node model (y = x + x, float [1, 8], opset 13, IR 8) built in memory to open real sessions."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])
    graph = helper.make_graph([helper.make_node("Add", ["x", "x"], ["y"])], "edgetl_probe", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # every onnxruntime >= 1.15 and TensorRT >= 8.5 parse it
    return model.SerializeToString()


def ep_error(printed: str) -> Optional[str]:
    """The reason in onnxruntime's printed ``EP Error`` block, without its source-file prefix."""
    for line in printed.splitlines():
        if line.startswith("EP Error"):
            reason = re.sub(r"^EP Error\s+(\S+\.cc:\d+\s+)?(.*?\)\s+)?", "", line).strip()
            return reason[:200] or None
    return None


def probe_provider(ort: Any, provider: str, model: bytes) -> Dict[str, Any]:
    """Run ``model`` in a session asked for ``provider`` (then the CPU): ``{"runs_on": the session's first
    provider or None, "correct": y == 2x, "error": why it fell back or failed}``."""
    feed = {"x": np.arange(8, dtype=np.float32).reshape(1, 8)}
    options = ort.SessionOptions()
    options.log_severity_level = 4
    providers = [provider] + ([CPU_PROVIDER] if provider != CPU_PROVIDER else [])
    printed = io.StringIO()  # onnxruntime prints "EP Error ..." when it falls back to the CPU
    try:
        with contextlib.redirect_stdout(printed):
            session = ort.InferenceSession(model, options, providers=providers)
            out = session.run(None, feed)[0]
    except Exception as exc:  # onnxruntime raises its own types; any failure means "does not run here"
        return {"runs_on": None, "correct": False, "error": str(exc).strip().splitlines()[0][:200]}
    correct = bool(np.allclose(out, feed["x"] * 2))
    return {"runs_on": session.get_providers()[0], "correct": correct, "error": ep_error(printed.getvalue())}


def probe_providers(ort: Any, providers: Sequence[str]) -> Dict[str, Dict[str, Any]]:
    """``probe_provider`` for each provider, with onnxruntime's log quiet meanwhile (failures are reported in
    the results, not as log lines)."""
    model = tiny_onnx_model()
    ort.set_default_logger_severity(4)
    try:
        return {provider: probe_provider(ort, provider, model) for provider in providers}
    finally:
        ort.set_default_logger_severity(2)  # onnxruntime's default (warnings)


def provider_problem(provider: str) -> Optional[str]:
    """Why ``provider`` does not run a session here (None: it does), from a real session."""
    ort = require("onnxruntime")
    if provider not in ort.get_available_providers():
        return "this onnxruntime ({}) has no {}".format(ort.__version__, provider)
    run = probe_providers(ort, [provider])[provider]
    if run["runs_on"] == provider and run["correct"]:
        return None
    why = "a session asked for {} runs on {}".format(provider, run["runs_on"])
    return why + (" ({})".format(run["error"]) if run["error"] else "")
