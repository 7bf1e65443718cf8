"""Parity of an exported model with the PyTorch model it came from, on real and random inputs.

Outputs are compared as the models return them (logits, or probabilities for jetson-style
models): max |difference|, the worst per-input cosine similarity, and top-1 agreement.
Torch-free: the reference outputs are passed in.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from edgetl.contracts.preprocess import PreprocessSpec, geometry_pixels, load_input, normalize
from edgetl.data.folders import Sample
from edgetl.data.sampling import select_balanced
from edgetl.errors import DataError
from edgetl.runtime.base import infer_batched
from edgetl.runtime.onnxrt import OnnxRuntimeRunner

log = logging.getLogger(__name__)

FP32_MIN_AGREEMENT = 0.999
FP32_MAX_ABS_DIFF = 1e-3
FP16_MIN_AGREEMENT = 0.99
FP16_MIN_COSINE = 0.999
CHUNK = 32


@dataclass
class EvalImages:
    """Validation images after the eval geometry, kept as uint8 HWC crops (normalised per chunk)."""

    paths: List[str]
    labels: np.ndarray
    crops: np.ndarray  # (N, H, W, 3) uint8

    def __len__(self) -> int:
        return len(self.paths)


def load_eval_images(samples: Sequence[Sample], spec: PreprocessSpec, limit: int, seed: int) -> EvalImages:
    """Up to ``limit`` validation images (a seeded, class-balanced subset when there are more), sorted by
    path, as input pixels of ``spec.geometry``; unreadable ones (and frames a geometry cannot take) are skipped."""
    chosen = sorted(select_balanced(samples, limit, seed), key=lambda s: str(s.path))
    paths, labels, crops = [], [], []
    for sample in chosen:
        try:
            crops.append(geometry_pixels(load_input(sample.path, spec), spec))
        except DataError as exc:
            log.warning("parity check skips %s", exc)
            continue
        paths.append(str(sample.path))
        labels.append(sample.label)
    if not crops:
        raise DataError("no readable validation images for the parity check")
    return EvalImages(paths, np.asarray(labels, dtype=np.int64), np.stack(crops))


def heldout_images(
    train: Sequence[Sample], calibration: Sequence[Sample], spec: PreprocessSpec, limit: int, seed: int
) -> EvalImages:
    """The training images calibration did not use (up to ``limit``; maybe none): the accuracy gate's
    unlabelled-for-the-model sample beside the val images."""
    used = {str(s.path) for s in calibration}
    pool = [s for s in train if str(s.path) not in used]
    if not pool or limit == 0:
        size = spec.input_size
        return EvalImages([], np.zeros(0, np.int64), np.zeros((0, size, size, 3), np.uint8))
    return load_eval_images(pool, spec, limit, seed)


def normalized(crops: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """uint8 (N, H, W, 3) -> normalised float32 (N, 3, H, W) with the one shared definition."""
    return np.stack([normalize(crop, spec) for crop in crops])


def random_inputs(count: int, spec: PreprocessSpec, layout: str, seed: int) -> np.ndarray:
    """Random model inputs: standard-normal NCHW float32, or uniform uint8 NHWC pixels."""
    rng = np.random.default_rng(seed)
    size = spec.input_size
    if layout == "NHWC":
        return rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8)
    return rng.standard_normal((count, 3, size, size)).astype(np.float32)


def outputs_in_chunks(
    fn: Callable[[np.ndarray], np.ndarray],
    inputs: np.ndarray,
    prepare: Optional[Callable[[np.ndarray], np.ndarray]] = None,
) -> np.ndarray:
    """``fn`` over ``inputs`` in chunks (``prepare`` maps each chunk first, e.g. normalisation)."""
    parts = []
    for start in range(0, len(inputs), CHUNK):
        chunk = inputs[start : start + CHUNK]
        parts.append(np.asarray(fn(prepare(chunk) if prepare else chunk), dtype=np.float64))
    return np.concatenate(parts)


def onnx_outputs(
    path: Path,
    inputs: np.ndarray,
    batch: Optional[int],
    threads: Optional[int] = None,
    prepare: Optional[Callable[[np.ndarray], np.ndarray]] = None,
    optimize: bool = True,
) -> np.ndarray:
    """Outputs of an ONNX model (ONNX Runtime, CPU) for ``inputs`` (``optimize``: see OnnxRuntimeRunner)."""
    with OnnxRuntimeRunner(path, threads=threads, optimize=optimize) as runner:
        name = next(iter(runner.input_metadata()))
        return outputs_in_chunks(lambda x: infer_batched(runner, name, x, batch), inputs, prepare)


@dataclass
class Parity:
    real_inputs: int
    random_inputs: int
    max_abs_diff: float
    min_cosine: float
    top1_agreement: float  # on the real images
    random_top1_agreement: Optional[float]  # None without random inputs

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def compare(reference: np.ndarray, candidate: np.ndarray, real: int) -> Parity:
    """Compare outputs row by row; the first ``real`` rows are real images, the rest random inputs."""
    reference, candidate = np.asarray(reference, np.float64), np.asarray(candidate, np.float64)
    norms = np.linalg.norm(reference, axis=1) * np.linalg.norm(candidate, axis=1)
    cosine = (reference * candidate).sum(axis=1) / np.maximum(norms, 1e-30)
    agree = reference.argmax(1) == candidate.argmax(1)
    return Parity(
        real,
        len(reference) - real,
        float(np.abs(reference - candidate).max()),
        float(cosine.min()),
        float(agree[:real].mean()),
        float(agree[real:].mean()) if len(agree) > real else None,
    )


def fp32_failures(parity: Parity) -> List[str]:
    """Why an fp32 export fails its gate (empty: passed)."""
    failures = []
    if parity.top1_agreement < FP32_MIN_AGREEMENT:
        failures.append(
            "top-1 agrees with PyTorch on {:.2%} of images (gate >= {:.1%})".format(
                parity.top1_agreement, FP32_MIN_AGREEMENT
            )
        )
    if not parity.max_abs_diff <= FP32_MAX_ABS_DIFF:
        failures.append(
            "max |difference| to PyTorch is {:.3g} (gate <= {:g})".format(parity.max_abs_diff, FP32_MAX_ABS_DIFF)
        )
    return failures


def fp16_failures(parity: Parity) -> List[str]:
    failures = []
    if parity.top1_agreement < FP16_MIN_AGREEMENT:
        failures.append(
            "fp16 top-1 agrees with PyTorch on {:.2%} of images (gate >= {:.0%})".format(
                parity.top1_agreement, FP16_MIN_AGREEMENT
            )
        )
    if not parity.min_cosine >= FP16_MIN_COSINE:
        failures.append("fp16 worst cosine similarity {:.5f} (gate >= {})".format(parity.min_cosine, FP16_MIN_COSINE))
    return failures


def top1(outputs: np.ndarray, labels: np.ndarray) -> float:
    return float((np.asarray(outputs)[: len(labels)].argmax(1) == labels).mean())
