"""``--for triton``: a Triton Inference Server model repository (``tritonserver --model-repository=OUT/triton``).

One model folder per variant, each ``<model>/config.pbtxt`` + ``<model>/1/<file>`` + ``labels.txt``:
- ``<run>``: the bundle's checked ``model.onnx`` on the ONNX Runtime backend (``onnxruntime_onnx``);
- ``<run>_int8``: the bundle's gated INT8 ONNX, when the export made one;
- ``<run>_trt`` in a second repository, ``OUT/triton-trt``: ``tensorrt_plan``, whose ``1/model.plan`` the
  device-side engine build writes (``build_engine.sh`` or ``edgetl build-engine``). It is kept apart because
  tritonserver stops at start-up on a model it cannot load, as this one is until its plan is built; a plan
  only runs on the TensorRT release and GPU that built it.
``max_batch_size`` is the batch profile's maximum, dims leave the batch out, the dynamic batcher is on,
and ``label_filename`` lets Triton's classification extension answer with class names. Each config is
built as tritonclient's ``ModelConfig`` protobuf message and written in protobuf text format, so it is
valid against Triton's own schema (model_config.proto).
"""

from __future__ import annotations

import importlib.util
import re
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from google.protobuf import text_format  # protobuf comes with onnx

from edgetl.contracts.formats import CONSUMERS, ONNX_FILES
from edgetl.core.fileio import atomic_dir, atomic_write_text, sha256_file
from edgetl.errors import DependencyError
from edgetl.export.config import ExportConfig
from edgetl.export.targets.common import TargetFailed, TargetInputs, write_labels

NAME = "triton"
CONSUMER = "Triton Inference Server 24.x/25.x (model configuration of r24.08 and later)"
ONNX_PLATFORM, PLAN_PLATFORM = "onnxruntime_onnx", "tensorrt_plan"
PLAN_FILE = "model.plan"


def model_config_pb2() -> Any:
    """tritonclient's generated ``model_config_pb2`` (Triton's model_config.proto), loaded from its file:
    importing ``tritonclient.grpc`` would also need grpcio, which validating a config does not."""
    spec = importlib.util.find_spec("tritonclient")
    path = Path(spec.origin).parent / "grpc" / "model_config_pb2.py" if spec and spec.origin else None
    if path is None or not path.is_file():
        raise DependencyError(
            "--for triton writes its configs with Triton's schema from tritonclient; pip install tritonclient"
        )
    module_spec = importlib.util.spec_from_file_location("edgetl_triton_model_config_pb2", str(path))
    module = importlib.util.module_from_spec(module_spec)  # type: ignore[arg-type]
    module_spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def model_name(config: ExportConfig) -> str:
    """The Triton model name of a run: its folder name, with characters Triton does not allow replaced."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", Path(config.run).resolve().name) or "model"


PLAN_REPOSITORY = "{}-trt".format(CONSUMERS[NAME].folder)  # OUT/triton-trt: the tensorrt_plan model's repository


def plan_path(config: ExportConfig) -> str:
    """Where, relative to the bundle, the device-side build also writes the engine: the plan model's file."""
    return "{}/{}_trt/1/{}".format(PLAN_REPOSITORY, model_name(config), PLAN_FILE)


def config_message(
    name: str, platform: str, max_batch: int, size: int, classes: int, dla_core: Optional[int] = None
) -> Any:
    """The ModelConfig of one variant: float32 input [3, size, size], float32 output [classes]. A plan built for
    a DLA core runs there: Triton's TensorRT backend takes the core as the instance group's secondary device
    (KIND_NVDLA, triton-inference-server/server pull request 2912)."""
    pb2 = model_config_pb2()
    target = CONSUMERS[NAME]
    config = pb2.ModelConfig(name=name, platform=platform, max_batch_size=max_batch)
    config.input.add(name=target.input_name, data_type=pb2.TYPE_FP32, dims=[3, size, size])
    config.output.add(name=target.output_name, data_type=pb2.TYPE_FP32, dims=[classes], label_filename="labels.txt")
    config.dynamic_batching.SetInParent()
    if dla_core is not None:
        group = config.instance_group.add(kind=pb2.ModelInstanceGroup.KIND_GPU)
        group.secondary_devices.add(kind=pb2.ModelInstanceGroup.SecondaryDevice.KIND_NVDLA, device_id=dla_core)
    return config


def config_text(message: Any) -> str:
    return text_format.MessageToString(message)


def _variant(root: Path, inputs: TargetInputs, name: str, platform: str, source: Path = None) -> Dict[str, Any]:
    """One model folder: config.pbtxt, labels.txt and (for ONNX) the bundle's model copied as 1/model.onnx."""
    profile = inputs.config.profile()
    max_batch = profile.max if profile else 0
    dla_core = inputs.config.dla_core if platform == PLAN_PLATFORM else None
    message = config_message(name, platform, max_batch, inputs.spec.input_size, len(inputs.class_names), dla_core)
    folder = root / name
    folder.mkdir(parents=True)
    atomic_write_text(folder / "config.pbtxt", config_text(message))
    write_labels(folder / "labels.txt", inputs.class_names)
    entry: Dict[str, Any] = {"model": name, "platform": platform, "max_batch_size": max_batch}
    if source is not None:
        (folder / "1").mkdir()
        copy = folder / "1" / "model.onnx"
        shutil.copyfile(str(source), str(copy))
        if sha256_file(copy) != sha256_file(source):
            raise TargetFailed(["{}: {} differs from the bundle's {}".format(NAME, copy, source.name)])
        entry["file"] = "1/model.onnx"
    else:
        entry["file"] = "1/" + PLAN_FILE
    return entry


def write(inputs: TargetInputs, folder: Path) -> Dict[str, Any]:
    """The model repository in ``folder`` (the fp32 ONNX model, the INT8 one if any) and the TensorRT plan
    model's repository beside it (OUT/triton-trt, its plan to be built on the device)."""
    base = model_name(inputs.config)
    models = inputs.manifest["models"]
    variants: List[Tuple[str, str, Any]] = [(base, ONNX_PLATFORM, inputs.out / ONNX_FILES["fp32"])]
    if "int8" in models:
        variants.append((base + "_int8", ONNX_PLATFORM, inputs.out / ONNX_FILES["int8"]))
    entries = [_variant(folder, inputs, name, platform, source) for name, platform, source in variants]
    with atomic_dir(inputs.out / PLAN_REPOSITORY) as plan_repository:
        entries.append(_variant(plan_repository, inputs, base + "_trt", PLAN_PLATFORM))
    top1 = {a["kind"]: a.get("val_top1") for a in inputs.report.get("artifacts", []) if a.get("status") == "passed"}
    entries[0]["val_top1"] = top1.get("fp32")
    if "int8" in models:
        entries[1]["val_top1"] = top1.get("int8")
    atomic_write_text(folder / "README.md", _readme(inputs, entries))
    files = ["README.md"] + [e["model"] for e in entries[:-1]] + ["../{}/{}".format(PLAN_REPOSITORY, base + "_trt")]
    return {"consumer": CONSUMER, "models": entries, "files": files}


def _readme(inputs: TargetInputs, entries: List[Dict[str, Any]]) -> str:
    target = CONSUMERS[NAME]
    lines = [
        "Written by `{}` for {}.".format(inputs.command(), CONSUMER),
        "```bash\ncd ..   # the bundle folder\ndocker run --gpus all --rm -p8000:8000 -p8001:8001 -v $PWD:/models "
        "nvcr.io/nvidia/tritonserver:<yy.mm>-py3 tritonserver --model-repository=/models/{t}\n# after "
        "`sh build_engine.sh` on this device: add --model-repository=/models/{p}\n```".format(
            t=CONSUMERS[NAME].folder, p=PLAN_REPOSITORY
        ),
        "Input `{}`: float32 [3, {s}, {s}] normalised as the run's preprocess.json says; output `{}`: {} logits "
        "(no softmax), with `labels.txt` for the classification extension.".format(
            target.input_name, target.output_name, len(inputs.class_names), s=inputs.spec.input_size
        ),
    ]
    for entry in entries:
        top1 = entry.get("val_top1")
        figure = " Val top-1 {:.2%}.".format(top1) if top1 is not None else ""
        lines.append("- `{model}` ({platform}, max_batch_size {max_batch_size}): `{file}`.{figure}".format(
            figure=figure, **entry
        ))  # fmt: skip
    lines.append(
        "`../{}/{}/1/{}` is written on the device by the bundle's engine build (`sh build_engine.sh` or `edgetl "
        "build-engine`), for the TensorRT release and GPU that build it: Triton must run the same TensorRT. Val "
        "figures: ONNX Runtime on the run's val images with the run's own preprocessing (preprocess.json), which "
        "a Triton client applies before it sends `{}`.".format(
            PLAN_REPOSITORY, entries[-1]["model"], PLAN_FILE, target.input_name
        )
    )
    return "# Triton model repository\n\n" + "\n\n".join(lines[:3]) + "\n\n" + "\n".join(lines[3:]) + "\n"
