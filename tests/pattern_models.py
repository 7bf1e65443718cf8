"""A tiny model exported to ONNX beside red/blue pattern images, the shared fixture of the INT8 fallback and
recovery tests (each builds a model whose INT8 fails in its own way)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

import numpy as np
import torch

from edgetl.contracts.preprocess import PreprocessSpec
from edgetl.data.folders import scan_class_folders
from edgetl.export.parity import load_eval_images

SPEC = PreprocessSpec(input_size=32, resize_size=36)


def red_blue_model(root: Path, module: torch.nn.Module) -> Dict[str, Any]:
    """``module`` as ``root/model.onnx`` and 160 pattern images under ``root/data`` (kinds a, b red; c, d blue)
    read as eval crops: {"root", "model", "samples", "images"}."""
    from conftest import write_patterns

    write_patterns(root / "data", {"": dict.fromkeys("abcd", 40)}, 40, np.random.default_rng(3), "{i:02d}.png")
    model = root / "model.onnx"
    dummy = torch.zeros(1, 3, SPEC.input_size, SPEC.input_size)
    torch.onnx.export(
        module.eval(), (dummy,), str(model), dynamo=False, opset_version=17,
        input_names=["input"], output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    )  # fmt: skip
    samples = scan_class_folders(root / "data")[1]
    images = load_eval_images(samples, SPEC, 1000, 0)
    return {"root": root, "model": model, "samples": samples, "images": images}
