"""Device runtime: runners with one shape for ONNX Runtime, TensorRT and (optionally) PyTorch,
and a ``Classifier`` that turns images into top-k labels from a bundle.

Importing this module never imports torch (Jetson images often lack a matching build);
TensorRT and torch are imported only when their backend is activated. Python 3.8 syntax.

    with Classifier(Bundle.load("models/run"), backend="onnx") as clf:
        print(clf.classify_paths(["cat.jpg"]))
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from edgetl.contracts.bundle import LABELS, Bundle, ModelInfo
from edgetl.contracts.formats import BACKENDS, ONNX_FILES
from edgetl.contracts.preprocess import eval_array, geometry_pixels, load_input, to_rgb
from edgetl.core.cpu import cpu_isa
from edgetl.errors import CheckpointError, ConfigError, DataError, DependencyError
from edgetl.runtime.base import Runner, infer_batched, softmax
from edgetl.runtime.onnxrt import OnnxRuntimeRunner
from edgetl.runtime.providers import TENSORRT_PROVIDER, provider_problem
from edgetl.runtime.tensorrt import TrtRunner
from edgetl.runtime.torch_runner import TorchRunner

log = logging.getLogger(__name__)
_ENGINE_PREFERENCE = ("int8", "fp16", "fp32")


@dataclass(frozen=True)
class BackendChoice:
    backend: str  # torch, onnx, onnx-int8, trt or ort-trt
    model: Optional[ModelInfo]  # the ONNX model (for trt: the one the engine was built from)
    engine: Optional[str] = None

    def ort_device(self, device: str) -> str:
        """The OnnxRuntimeRunner device of this choice: ``tensorrt`` for ort-trt, else the requested one."""
        return "tensorrt" if self.backend == "ort-trt" else device


def _importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def warn_if_built_for_another_cpu(model: ModelInfo, isa: Optional[str] = None) -> bool:
    """Log a warning (and return True) when a CPU INT8 model was built for another instruction set: its
    integer kernels, and so its predictions, may differ from what the export's accuracy gate measured."""
    here = isa or cpu_isa()
    if model.int8_form != "cpu" or model.int8_cpu_isa in (None, here):
        return False
    log.warning(
        "%s was built for %s CPUs, this one is %s: predictions may differ from the export's accuracy gate; "
        "re-export with --int8-cpu-isa %s",
        model.file,
        model.int8_cpu_isa,
        here,
        here,
    )
    return True


def choose_backend(bundle: Bundle, backend: str = "auto") -> BackendChoice:
    """The backend :func:`pick_backend` chooses, its ONNX model verified against ``bundle.json``'s sha256."""
    choice = pick_backend(bundle, backend)
    if choice.model is not None:
        bundle.verified(choice.model)
    return choice


def pick_backend(bundle: Bundle, backend: str = "auto") -> BackendChoice:
    """Which model runs: ``auto`` prefers a TensorRT engine (when tensorrt is importable), then the
    fp32 ONNX, then INT8 ONNX, then the PyTorch checkpoint (when torch is importable). ``ort-trt`` (never
    chosen by auto) runs the fp32 ONNX on ONNX Runtime's TensorRT provider, only where a real session starts on it."""
    if backend not in BACKENDS:
        raise ConfigError("backend must be one of {}, got {!r}".format(", ".join(BACKENDS), backend))
    engines = bundle.engines()
    onnx_model = bundle.model("fp32") or bundle.model("baked")
    if backend == "ort-trt":
        if onnx_model is None:
            raise CheckpointError("{} has no ONNX model; run 'edgetl export RUN' first".format(bundle.root))
        problem = provider_problem(TENSORRT_PROVIDER)
        if problem is not None:
            raise DependencyError("--backend ort-trt: ONNX Runtime's TensorRT provider does not run here: " + problem)
        return BackendChoice("ort-trt", onnx_model)
    if backend == "trt" or (backend == "auto" and engines and _importable("tensorrt")):
        if not engines:
            raise CheckpointError(
                "{} has no TensorRT engine; build one with 'edgetl build-engine {}' or "
                "'edgetl export RUN --trt'".format(bundle.root, bundle.root)
            )
        plans = {e: bundle.engine_plan(e) or {} for e in engines}  # engines() lists the manifest's entries
        engine = sorted(engines, key=lambda e: _ENGINE_PREFERENCE.index(plans[e]["precision"]))[0]
        source = {f: k for k, f in ONNX_FILES.items()}[plans[engine]["onnx"]]
        return BackendChoice("trt", bundle.model(source) or bundle.model("fp32"), engine)
    if backend == "onnx" or (backend == "auto" and onnx_model is not None):
        if onnx_model is None:
            raise CheckpointError("{} has no ONNX model; run 'edgetl export RUN' first".format(bundle.root))
        return BackendChoice("onnx", onnx_model)
    int8_model = bundle.model("int8")
    if backend == "onnx-int8" or (backend == "auto" and int8_model is not None):
        if int8_model is None:
            raise CheckpointError("{} has no INT8 model; export it with 'edgetl export RUN --int8'".format(bundle.root))
        warn_if_built_for_another_cpu(int8_model)
        return BackendChoice("onnx-int8", int8_model)
    if bundle.checkpoint_dir() is None:
        raise CheckpointError(
            "{} has no model to run: no ONNX model, and no best.pt (in it or its run) that it was exported "
            "from; {}".format(bundle.root, bundle.reexport_hint())
        )
    if not _importable("torch"):
        raise DependencyError("the torch backend needs torch: pip install 'edgetl[train]' (or use --backend onnx)")
    return BackendChoice("torch", None)


@dataclass(frozen=True)
class Prediction:
    source: str
    labels: List[str]
    probabilities: List[float]

    def to_dict(self) -> Dict[str, Any]:
        return {
            "image": self.source,
            "top": [{"label": label, "probability": p} for label, p in zip(self.labels, self.probabilities)],
        }


class Classifier:
    """Classify images with a bundle: preprocessing from ``preprocess.json``, labels from ``labels.txt``."""

    def __init__(
        self, bundle: Bundle, backend: str = "auto", device: str = "cpu", topk: int = 5, batch_size: int = 8
    ) -> None:
        if topk < 1:
            raise ConfigError("--topk must be >= 1")
        self.bundle, self.topk, self.device, self.batch_size = bundle, topk, device, batch_size
        self.requested = backend
        self.choice = choose_backend(bundle, backend)
        self.runner = self._make_runner(self.choice)  # infer_batched keeps batches within the runner's limits

    def _make_runner(self, choice: BackendChoice) -> Runner:
        if choice.backend == "torch":
            run_dir = self.bundle.checkpoint_dir()
            assert run_dir is not None  # choose_backend picks torch only when the bundle has a checkpoint
            return TorchRunner(run_dir)
        assert choice.model is not None  # every backend but torch runs an ONNX model or an engine built from one
        if choice.backend == "trt":
            assert choice.engine is not None
            return TrtRunner(self.bundle.root / choice.engine, onnx_path=self.bundle.root / choice.model.file)
        return OnnxRuntimeRunner(self.bundle.root / choice.model.file, device=choice.ort_device(self.device))

    def __enter__(self) -> "Classifier":
        try:
            self.runner.activate()
        except (CheckpointError, DependencyError) as exc:
            if self.requested != "auto" or self.choice.backend != "trt":
                raise
            log.warning("not using the TensorRT engine: %s; falling back to ONNX Runtime", exc)
            self.choice = choose_backend(self.bundle, "onnx")
            self.runner = self._make_runner(self.choice)
            self.runner.activate()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.runner.deactivate()

    @property
    def input_layout(self) -> str:
        return "NCHW" if self.choice.model is None else self.choice.model.input_layout

    def preprocess(self, img: Image.Image) -> np.ndarray:
        """One image as the model takes it: normalised float32 CHW, or uint8 HWC for a baked model."""
        spec = self.bundle.preprocess
        if self.input_layout == "NHWC":
            return geometry_pixels(to_rgb(img), spec)
        return eval_array(img, spec)

    def classify_arrays(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities of a preprocessed batch."""
        name = next(iter(self.runner.input_metadata()))
        static = None if self.choice.model is None else self.choice.model.batch
        outputs = infer_batched(self.runner, name, batch, static, self.batch_size)
        if outputs.ndim != 2 or outputs.shape[1] != len(self.bundle.labels):
            raise CheckpointError(
                "the {} model of {} gives {} outputs but {} has {} labels: it is not this bundle's model; {}".format(
                    self.choice.backend, self.bundle.root, outputs.shape[-1], LABELS, len(self.bundle.labels),
                    self.bundle.reexport_hint(),
                )
            )  # fmt: skip
        kind = "logits" if self.choice.model is None else self.choice.model.output_kind
        return softmax(outputs.astype(np.float64)) if kind == "logits" else outputs.astype(np.float64)

    def _top(self, source: str, probabilities: np.ndarray) -> Prediction:
        order = np.argsort(-probabilities)[: min(self.topk, len(probabilities))]
        labels = [self.bundle.labels[i] if i < len(self.bundle.labels) else "class {}".format(i) for i in order]
        return Prediction(source, labels, [float(probabilities[i]) for i in order])

    def classify_paths(self, paths: Sequence[Union[str, Path]]) -> Iterator[Tuple[str, Union[Prediction, str]]]:
        """Yield ``(path, Prediction)``, or ``(path, error message)`` for a file that cannot be read."""
        pending = []  # type: List[Tuple[str, np.ndarray]]
        for index, path in enumerate(paths):
            try:
                pending.append((str(path), self.preprocess(load_input(Path(path), self.bundle.preprocess))))
            except DataError as exc:
                yield str(path), str(exc)
            if pending and (len(pending) == self.batch_size or index == len(paths) - 1):
                probabilities = self.classify_arrays(np.stack([a for _, a in pending]))
                for (source, _), row in zip(pending, probabilities):
                    yield source, self._top(source, row)
                pending = []
