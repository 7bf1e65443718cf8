"""PyTorch -> ONNX: the exported module (optional baked preprocessing, optional softmax), the
exporter call, and the finishing step every edgetl ONNX gets (IR version, metadata, checks).

Exporter choice: torch 2.14's default (dynamo) exporter cannot emit opset < 18 (it falls back to
18 when asked for 17) and TensorRT 8.5/8.6 on JetPack 5/6.0 parse opset <= 17; the TorchScript
exporter (``dynamo=False``) emits opsets 13-22 directly, with a clean dynamic batch axis.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import onnx

from edgetl import __version__
from edgetl.contracts.preprocess import PreprocessSpec
from edgetl.core.deps import require
from edgetl.errors import ExportError

torch = require("torch")


# input layouts of an exported module: normalised float32 NCHW, or pixels with the normalisation in the
# graph (uint8 NHWC: model_baked.onnx; float32 NCHW 0-255: what DeepStream's nvinfer feeds with net-scale-factor=1)
NORMALIZED, PIXELS_UINT8_NHWC, PIXELS_FLOAT_NCHW = "NCHW float32", "NHWC uint8", "NCHW float32 pixels 0-255"


class ExportModule(torch.nn.Module):
    """The classifier as exported: optionally pixels in (normalisation inside the graph; ``pixel_layout``
    one of the pixel layouts above) and optionally softmax probabilities out (jetson-inference and
    DeepStream read outputs as confidences)."""

    def __init__(
        self,
        model: Any,
        baked: Optional[PreprocessSpec] = None,
        softmax: bool = False,
        pixel_layout: str = PIXELS_UINT8_NHWC,
    ) -> None:
        super().__init__()
        self.model, self.baked, self.softmax = model, baked is not None, softmax
        self.input_layout = pixel_layout if baked is not None else NORMALIZED
        if baked is not None:
            mean = torch.tensor(baked.mean, dtype=torch.float32).view(1, 3, 1, 1)
            std = torch.tensor(baked.std, dtype=torch.float32).view(1, 3, 1, 1)
            # (pixels / 255 - mean) / std == pixels * scale - shift
            self.register_buffer("scale", 1.0 / (255.0 * std))
            self.register_buffer("shift", mean / std)

    def forward(self, x: Any) -> Any:
        if self.input_layout == PIXELS_UINT8_NHWC:
            x = x.permute(0, 3, 1, 2).float()
        if self.baked:
            x = x * self.scale - self.shift
        y = self.model(x)
        return torch.softmax(y, dim=1) if self.softmax else y


def export_onnx(
    module: ExportModule,
    path: Path,
    spec: PreprocessSpec,
    input_name: str,
    output_name: str,
    batch: Optional[int],
    opset: int,
    ir_version: int,
    metadata: Dict[str, str],
) -> None:
    """Export ``module`` to ``path`` (dynamic batch axis when ``batch`` is None) and finish it."""
    size = spec.input_size
    if module.input_layout == PIXELS_UINT8_NHWC:
        dummy = torch.zeros((batch or 1, size, size, 3), dtype=torch.uint8)
    else:
        dummy = torch.zeros((batch or 1, 3, size, size), dtype=torch.float32)
    dynamic_axes = None if batch else {input_name: {0: "batch"}, output_name: {0: "batch"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice (see module docstring)
        try:
            torch.onnx.export(
                module.eval(),
                (dummy,),
                str(path),
                dynamo=False,
                opset_version=opset,
                input_names=[input_name],
                output_names=[output_name],
                dynamic_axes=dynamic_axes,
                do_constant_folding=True,
            )
        except Exception as exc:  # the exporter raises many types; report one line
            raise ExportError("torch.onnx.export failed: {}".format(str(exc).splitlines()[0])) from exc
    finish_onnx(path, ir_version, metadata)


def module_outputs(module: Any, batch: np.ndarray, chunk: int = 32) -> np.ndarray:
    """float64 outputs of a torch module on a numpy batch, run in chunks without gradients."""
    with torch.no_grad():
        parts = [module(torch.from_numpy(batch[i : i + chunk])).numpy() for i in range(0, len(batch), chunk)]
    return np.concatenate(parts).astype(np.float64)


def finish_onnx(path: Path, ir_version: int, metadata: Dict[str, str]) -> None:
    """Set the IR version the target parser accepts, write metadata props, infer shapes and run the
    full checker; rewrite ``path`` in place."""
    model = onnx.load(str(path))
    model.ir_version = ir_version
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, metadata)
    try:
        model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError("{} fails the ONNX checker: {}".format(path.name, str(exc).splitlines()[0])) from exc
    onnx.save(model, str(path))


def onnx_metadata(
    payload: Dict[str, Any], spec: PreprocessSpec, checkpoint_sha256: str, **extra: str
) -> Dict[str, str]:
    """Metadata props: class names, arch, strategy, input size, mean/std, source checkpoint, edgetl version."""
    props = {
        "class_names": json.dumps(list(payload["class_names"])),
        "arch": payload["arch"],
        "strategy": payload["strategy"],
        "input_size": str(spec.input_size),
        "mean": json.dumps(list(spec.mean)),
        "std": json.dumps(list(spec.std)),
        "preprocess": json.dumps(spec.to_dict()),
        "source_checkpoint_sha256": checkpoint_sha256,
        "edgetl_version": __version__,
    }
    props.update(extra)
    return props
