"""``--for jetson-inference``: a folder that jetson-inference's ``imagenet`` program loads as it is.

What ``imagenet`` does with an ONNX model (dusty-nv/jetson-inference: c/imageNet.cpp, c/tensorNet.cpp,
c/tensorConvert.cu; master of 2025-10, the code JetPack 5.1 and 6.x users build):
- normalises with hard-coded ImageNet constants: ``((pixel * 1/255) - mean) / std`` on RGB, mean
  ``make_float3(0.485f, 0.456f, 0.406f)``, std ``make_float3(0.229f, 0.224f, 0.225f)``, range (0, 1);
- takes C, H, W from the model's own input (NCHW float32, the batch dimension dropped): any static size
  works, a dynamic dimension does not, and it stretches the whole frame to H x W (no crop);
- binds one input and one output by name (``--input_blob``/``--output_blob``); the output's length is the
  class count, which ``labels.txt`` must match line for line (every line counts, a blank one too; a line
  ``nXXXXXXXX text`` is read as a synset id and its text);
- builds its own engine with batch 1 and no optimisation profile (FP16 where the GPU has it; INT8 only with
  a calibrator, which the program never sets up) and caches it beside the model as
  ``<model>.1.1.<NV_TENSORRT_VERSION>.GPU.FP16.engine``: the folder must be writable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

from edgetl.contracts.formats import CONSUMERS
from edgetl.contracts.geometry import IMAGENET_STRETCH, imagenet_mismatch, imagenet_normalize
from edgetl.contracts.preprocess import PreprocessSpec
from edgetl.errors import ConfigError
from edgetl.export.targets.common import (
    TargetInputs,
    checked_onnx,
    geometry_note,
    val_top1,
    write_labels,
    write_readme,
)
from edgetl.export.torch_to_onnx import ExportModule

NAME = "jetson-inference"
CONSUMER = "jetson-inference's imagenet (dusty-nv/jetson-inference, 2025-10) on JetPack 5.1 and 6.x"
_LABEL_LINE = 512  # imagenet reads labels with fgets(str, 512, f): longer lines split into two labels


def refusal(spec: PreprocessSpec, class_names: Optional[List[str]]) -> Optional[str]:
    """Why ``imagenet`` cannot run this model as trained (None: it can)."""
    mismatch = imagenet_mismatch(spec.mean, spec.std)
    if mismatch:
        return "--for jetson-inference: " + mismatch
    for name in class_names or []:
        if len(name.encode("utf-8")) >= _LABEL_LINE - 1:
            return "--for jetson-inference: class name {!r}... is too long for imagenet's labels".format(name[:20])
        if len(name) > 9 and name[0] == "n" and name[9] == " ":
            return "--for jetson-inference: imagenet reads class {!r} as a synset id and a label".format(name)
    return None


def write(inputs: TargetInputs, folder: Path) -> Dict[str, Any]:
    """model.onnx (softmax, ``input_0``/``output_0``, batch 1), labels.txt and README.md in ``folder``."""
    problem = refusal(inputs.spec, inputs.class_names)
    if problem:
        raise ConfigError(problem)
    target = CONSUMERS[NAME]
    module = ExportModule(inputs.model, softmax=target.softmax)
    section = checked_onnx(inputs, folder / "model.onnx", NAME, module, target.static_batch)
    write_labels(folder / "labels.txt", inputs.class_names)
    images = inputs.images_for(IMAGENET_STRETCH)
    device_top1 = val_top1(folder / "model.onnx", images, target.static_batch, imagenet_normalize)
    notes = _readme(inputs, device_top1, len(images))
    write_readme(folder / "README.md", "jetson-inference: {}".format(inputs.payload["arch"]), notes)
    return dict(
        section,
        consumer=CONSUMER,
        files=["model.onnx", "labels.txt", "README.md"],
        geometry=IMAGENET_STRETCH,
        device_val_top1=device_top1,
        device_val_images=len(images),
    )


def _readme(inputs: TargetInputs, top1: float, images: int) -> List[str]:
    target = CONSUMERS[NAME]
    size = inputs.spec.input_size
    return [
        "Written by `{}` for {}.".format(inputs.command(), CONSUMER),
        "```bash\ncp -r . ~/models/{name} && cd ~/models/{name}   # a writable folder: imagenet caches its engine "
        "here\nimagenet --model=model.onnx --labels=labels.txt --input_blob={i} --output_blob={o} input.jpg "
        "output.jpg\n```".format(name=inputs.run_name, i=target.input_name, o=target.output_name),
        "- `model.onnx`: float32 NCHW input `{i}` of 1 x 3 x {s} x {s} (a static batch of 1: imagenet builds no "
        "optimisation profile), softmax output `{o}` of {n} confidences (imagenet compares them with "
        "`--threshold`).".format(i=target.input_name, o=target.output_name, s=size, n=len(inputs.class_names)),
        "- `labels.txt`: the {} class names, one per line, in the model's output order.".format(
            len(inputs.class_names)
        ),
        "- imagenet builds its own FP16 engine on the first run and caches it beside the model as "
        "`model.onnx.1.1.<TensorRT version>.GPU.FP16.engine`, so point it at the `.onnx` in a writable folder. "
        "It never builds INT8 from the command line, and it cannot take edgetl's baked (uint8 NHWC) or INT8 "
        "models, so this folder has neither.",
        "- Preprocessing: imagenet stretches the whole frame to {s} x {s} and normalises with ImageNet's mean and "
        "std, which this run was trained with (checked by the export).".format(s=size),
        "Val top-1 of `model.onnx` as imagenet computes it: {:.2%} on {} images. {}".format(
            top1, images, geometry_note("imagenet", IMAGENET_STRETCH)
        ),
    ]
