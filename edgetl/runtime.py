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

from .bundle import ONNX_FILES, Bundle, ModelInfo
from .deps import require
from .errors import CheckpointError, ConfigError, DataError, DependencyError
from .preprocess import eval_array, load_rgb, resize_and_crop, to_rgb

log = logging.getLogger(__name__)
BACKENDS = ("auto", "torch", "onnx", "onnx-int8", "trt")
_ENGINE_PREFERENCE = ("int8", "fp16", "fp32")


@dataclass(frozen=True)
class TensorMeta:
    shape: Tuple[Any, ...]  # ints; None or a name for dynamic dimensions
    dtype: Any  # numpy dtype


class Runner:
    """``activate`` / ``infer(feed) -> outputs`` / ``deactivate``, also as a context manager.

    ``infer`` takes and returns ``{tensor name: ndarray}`` and checks the feed against
    ``input_metadata()`` first, so every backend fails the same clear way on a wrong input."""

    name = "runner"

    def __init__(self) -> None:
        self.is_active = False

    def __enter__(self) -> "Runner":
        self.activate()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.deactivate()

    def activate(self) -> None:
        if not self.is_active:
            self._activate()
            self.is_active = True

    def deactivate(self) -> None:
        if self.is_active:
            self._deactivate()
            self.is_active = False

    def input_metadata(self) -> Dict[str, TensorMeta]:
        raise NotImplementedError

    def batch_range(self) -> Optional[Tuple[int, int]]:
        """(min, max) batch the active model accepts when the backend limits it (TensorRT profiles); None: any."""
        return None

    def infer(self, feed: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        if not self.is_active:
            raise RuntimeError("{} is not active: use it as a context manager or call activate()".format(self.name))
        check_feed(feed, self.input_metadata())
        return self._infer(feed)

    def _activate(self) -> None:
        raise NotImplementedError

    def _deactivate(self) -> None:
        raise NotImplementedError

    def _infer(self, feed: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        raise NotImplementedError


def check_feed(feed: Dict[str, np.ndarray], metadata: Dict[str, TensorMeta]) -> None:
    """ConfigError if the feed's names, dtypes, ranks or fixed dimensions differ from the model's."""
    if set(feed) != set(metadata):
        raise ConfigError("the model takes inputs {}, got {}".format(sorted(metadata), sorted(feed)))
    for name, meta in metadata.items():
        array = feed[name]
        if np.dtype(array.dtype) != np.dtype(meta.dtype):
            raise ConfigError("input {!r} must be {}, got {}".format(name, np.dtype(meta.dtype), array.dtype))
        fixed = [(i, d) for i, d in enumerate(meta.shape) if isinstance(d, int) and d >= 0]
        if array.ndim != len(meta.shape) or any(array.shape[i] != d for i, d in fixed):
            raise ConfigError("input {!r} must have shape {}, got {}".format(name, meta.shape, array.shape))


_ORT_TYPES = {"tensor(float)": np.float32, "tensor(uint8)": np.uint8, "tensor(float16)": np.float16,
              "tensor(int64)": np.int64, "tensor(int8)": np.int8}


class OnnxRuntimeRunner(Runner):
    """ONNX Runtime on the CPU (default) or the CUDA execution provider."""

    name = "onnxruntime"

    def __init__(self, path: Path, device: str = "cpu", threads: Optional[int] = None, spin: bool = True) -> None:
        super().__init__()
        if device not in ("cpu", "cuda"):
            raise ConfigError("ONNX Runtime device must be cpu or cuda, got {!r}".format(device))
        self.path, self.device, self.threads, self.spin = Path(path), device, threads, spin
        self.session = None  # type: Any

    def _activate(self) -> None:
        ort = require("onnxruntime")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if self.threads:
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
        if not self.spin:  # idle threads sleep instead of spinning (no load left on cores others time)
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = ["CPUExecutionProvider"]
        if self.device == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise DependencyError("this onnxruntime has no CUDA provider; install onnxruntime-gpu")
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            raise CheckpointError("ONNX Runtime cannot load {}: {}".format(self.path, str(exc).splitlines()[0])) from exc
        if self.device == "cuda" and "CUDAExecutionProvider" not in self.session.get_providers():
            log.warning("ONNX Runtime could not start its CUDA provider; running %s on the CPU", self.path.name)

    def _deactivate(self) -> None:
        self.session = None

    def input_metadata(self) -> Dict[str, TensorMeta]:
        return {i.name: TensorMeta(tuple(d if isinstance(d, int) else None for d in i.shape), _ORT_TYPES[i.type])
                for i in self.session.get_inputs()}

    def _infer(self, feed: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        names = [o.name for o in self.session.get_outputs()]
        return dict(zip(names, self.session.run(names, feed)))


class TorchRunner(Runner):
    """The run's PyTorch checkpoint (needs the training extra); input ``input``, output ``logits``."""

    name = "torch"

    def __init__(self, run_dir: Path) -> None:
        super().__init__()
        self.run_dir = Path(run_dir)
        self.model = None  # type: Any

    def _activate(self) -> None:
        require("torch")
        from .checkpoint import load_run

        self.model, _ = load_run(self.run_dir)

    def _deactivate(self) -> None:
        self.model = None

    def input_metadata(self) -> Dict[str, TensorMeta]:
        return {"input": TensorMeta((None, 3, None, None), np.float32)}

    def _infer(self, feed: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        torch = require("torch")
        with torch.no_grad():
            return {"logits": self.model(torch.from_numpy(np.ascontiguousarray(feed["input"]))).numpy()}


def infer_batched(runner: Runner, input_name: str, array: np.ndarray, batch: Optional[int],
                  chunk: int = 16) -> np.ndarray:
    """Run ``array`` through a single-input, single-output runner in chunks that fit its batch limits
    (a static ``batch``, else ``runner.batch_range()``): chunks of at most the maximum, a short last
    chunk zero-padded up to the minimum, and the padded rows dropped from the result."""
    low, high = (batch, batch) if batch else (runner.batch_range() or (1, chunk))
    step = max(low, min(chunk, high))
    outputs = []
    for start in range(0, len(array), step):
        part = array[start:start + step]
        if len(part) < low:
            part = np.concatenate([part, np.zeros((low - len(part),) + part.shape[1:], part.dtype)])
        result = runner.infer({input_name: np.ascontiguousarray(part)})
        outputs.append(next(iter(result.values()))[:len(array) - start])
    return np.concatenate(outputs)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


@dataclass(frozen=True)
class BackendChoice:
    backend: str  # torch, onnx, onnx-int8 or trt
    model: Optional[ModelInfo]  # the ONNX model (for trt: the one the engine was built from)
    engine: Optional[str] = None


def _importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def choose_backend(bundle: Bundle, backend: str = "auto") -> BackendChoice:
    """Which model runs: ``auto`` prefers a TensorRT engine (when tensorrt is importable), then the
    fp32 ONNX, then INT8 ONNX, then the PyTorch checkpoint (when torch is importable)."""
    if backend not in BACKENDS:
        raise ConfigError("backend must be one of {}, got {!r}".format(", ".join(BACKENDS), backend))
    engines = bundle.engines()
    onnx_model = bundle.model("fp32") or bundle.model("baked")
    if backend == "trt" or (backend == "auto" and engines and _importable("tensorrt")):
        if not engines:
            raise CheckpointError("{} has no TensorRT engine; build one with 'edgetl build-engine {}' or "
                                  "'edgetl export RUN --trt'".format(bundle.root, bundle.root))
        engine = sorted(engines, key=lambda e: _ENGINE_PREFERENCE.index(bundle.engine_plan(e)["precision"]))[0]
        source = {f: k for k, f in ONNX_FILES.items()}[bundle.engine_plan(engine)["onnx"]]
        return BackendChoice("trt", bundle.model(source) or bundle.model("fp32"), engine)
    if backend == "onnx" or (backend == "auto" and onnx_model is not None):
        if onnx_model is None:
            raise CheckpointError("{} has no ONNX model; run 'edgetl export RUN' first".format(bundle.root))
        return BackendChoice("onnx", onnx_model)
    if backend == "onnx-int8" or (backend == "auto" and bundle.model("int8") is not None):
        if bundle.model("int8") is None:
            raise CheckpointError("{} has no INT8 model; export it with 'edgetl export RUN --int8'".format(bundle.root))
        return BackendChoice("onnx-int8", bundle.model("int8"))
    if bundle.checkpoint_dir() is None:
        raise CheckpointError("{} has no PyTorch checkpoint (best.pt), nor does the run it came from".format(bundle.root))
    if not _importable("torch"):
        raise DependencyError("the torch backend needs torch: pip install 'edgetl[train]' (or use --backend onnx)")
    return BackendChoice("torch", None)


@dataclass(frozen=True)
class Prediction:
    source: str
    labels: List[str]
    probabilities: List[float]

    def to_dict(self) -> Dict[str, Any]:
        return {"image": self.source, "top": [{"label": l, "probability": p}
                                              for l, p in zip(self.labels, self.probabilities)]}


class Classifier:
    """Classify images with a bundle: preprocessing from ``preprocess.json``, labels from ``labels.txt``."""

    def __init__(self, bundle: Bundle, backend: str = "auto", device: str = "cpu", topk: int = 5,
                 batch_size: int = 8) -> None:
        if topk < 1:
            raise ConfigError("--topk must be >= 1")
        self.bundle, self.topk, self.device, self.batch_size = bundle, topk, device, batch_size
        self.requested = backend
        self.choice = choose_backend(bundle, backend)
        self.runner = self._make_runner(self.choice)  # infer_batched keeps batches within the runner's limits

    def _make_runner(self, choice: BackendChoice) -> Runner:
        if choice.backend == "torch":
            return TorchRunner(self.bundle.checkpoint_dir())
        if choice.backend == "trt":
            from .trt.runner import TrtRunner

            return TrtRunner(self.bundle.root / choice.engine, onnx_path=self.bundle.root / choice.model.file)
        return OnnxRuntimeRunner(self.bundle.root / choice.model.file, device=self.device)

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
            return np.asarray(resize_and_crop(to_rgb(img), spec), dtype=np.uint8)
        return eval_array(img, spec)

    def classify_arrays(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities of a preprocessed batch."""
        name = next(iter(self.runner.input_metadata()))
        static = None if self.choice.model is None else self.choice.model.batch
        outputs = infer_batched(self.runner, name, batch, static, self.batch_size)
        kind = "logits" if self.choice.model is None else self.choice.model.output_kind
        return softmax(outputs.astype(np.float64)) if kind == "logits" else outputs.astype(np.float64)

    def _top(self, source: str, probabilities: np.ndarray) -> Prediction:
        order = np.argsort(-probabilities)[:min(self.topk, len(probabilities))]
        labels = [self.bundle.labels[i] if i < len(self.bundle.labels) else "class {}".format(i) for i in order]
        return Prediction(source, labels, [float(probabilities[i]) for i in order])

    def classify_paths(self, paths: Sequence[Union[str, Path]]) -> Iterator[Tuple[str, Union[Prediction, str]]]:
        """Yield ``(path, Prediction)``, or ``(path, error message)`` for a file that cannot be read."""
        pending = []  # type: List[Tuple[str, np.ndarray]]
        for index, path in enumerate(paths):
            try:
                pending.append((str(path), self.preprocess(load_rgb(Path(path)))))
            except DataError as exc:
                yield str(path), str(exc)
            if pending and (len(pending) == self.batch_size or index == len(paths) - 1):
                probabilities = self.classify_arrays(np.stack([a for _, a in pending]))
                for (source, _), row in zip(pending, probabilities):
                    yield source, self._top(source, row)
                pending = []
