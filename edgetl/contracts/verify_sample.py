"""The verification sample every bundle carries (``verify_sample.npz``): real input crops as uint8 and each
exported ONNX model's reference outputs, computed with ONNX Runtime at export. ``edgetl verify`` runs the
bundle's models and engines on the crops on the device and compares. Plain ``numpy.savez`` (no pickles), so
the device reads it with numpy alone; ``verify_data.py`` feeds the same crops to Polygraphy where edgetl is
not installed. Torch-free, Python 3.8.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional

import numpy as np

from edgetl.contracts.formats import ONNX_FILES
from edgetl.core.fileio import atomic_write_bytes, atomic_write_text
from edgetl.errors import CheckpointError

MIN_IMAGES = 16  # 16 crops of 224 x 224 x 3 uint8: 2.4 MB
PIXELS = "pixels"
_REFERENCE = "reference_"


@dataclass(frozen=True)
class VerificationSample:
    """Input crops (N, H, W, 3) uint8 and reference outputs (N, classes) per ONNX model kind."""

    pixels: np.ndarray
    references: Dict[str, np.ndarray]


def write_sample(path: Path, sample: VerificationSample) -> None:
    """Write the sample atomically (an uncompressed ``.npz``: pixels plus ``reference_<kind>`` arrays)."""
    arrays = {PIXELS: np.ascontiguousarray(sample.pixels, dtype=np.uint8)}
    arrays.update({_REFERENCE + kind: np.asarray(out, dtype=np.float32) for kind, out in sample.references.items()})
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(Path(path), buffer.getvalue())


def read_sample(path: Path) -> VerificationSample:
    """Read and check a sample; CheckpointError (one line) if it is unreadable or malformed."""
    try:
        with np.load(str(path), allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError("cannot read verification sample {}: {}".format(path, exc)) from exc
    pixels = arrays.pop(PIXELS, None)
    if pixels is None or pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[-1] != 3:
        raise CheckpointError("{} holds no (N, H, W, 3) uint8 'pixels'".format(path))
    references = {}
    for name, values in arrays.items():
        kind = name[len(_REFERENCE) :]
        if not name.startswith(_REFERENCE) or kind not in ONNX_FILES:
            raise CheckpointError("{} holds an unknown array {!r}".format(path, name))
        if values.ndim != 2 or len(values) != len(pixels):
            raise CheckpointError(
                "{}: {} has shape {}, expected ({}, classes)".format(path, name, values.shape, len(pixels))
            )
        references[kind] = values
    return VerificationSample(pixels, references)


_DATA_LOADER = '''"""Polygraphy data loader of this bundle's verification sample (numpy only; edgetl {version}):

    {command}
"""
import json
import os

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
INPUT, LAYOUT, BATCH = {input_name!r}, {layout!r}, {batch}


def load_data():
    with np.load(os.path.join(HERE, {sample!r})) as sample:
        pixels = sample["pixels"]
    if LAYOUT == "NCHW":
        with open(os.path.join(HERE, "preprocess.json")) as handle:
            spec = json.load(handle)
        scaled = pixels.astype(np.float32) / np.float32(255.0)
        mean, std = np.asarray(spec["mean"], np.float32), np.asarray(spec["std"], np.float32)
        pixels = np.ascontiguousarray(((scaled - mean) / std).transpose(0, 3, 1, 2))
    for start in range(0, len(pixels) - BATCH + 1, BATCH):
        yield {{INPUT: pixels[start : start + BATCH]}}
'''


def write_data_loader(
    path: Path, sample_file: str, input_name: str, layout: str, batch: Optional[int], command: str, version: str
) -> None:
    """``verify_data.py``: ``load_data()`` yields the sample's crops as the model takes them (the normalisation
    of ``edgetl.contracts.preprocess.normalize``), ``batch`` at a time (1 for a dynamic batch axis)."""
    text = _DATA_LOADER.format(
        version=version,
        command=command,
        input_name=input_name,
        layout=layout,
        batch=int(batch or 1),
        sample=sample_file,
    )
    atomic_write_text(Path(path), text)


def reference_scale(sample: VerificationSample, kind: str) -> float:
    """max(1, max |reference|): tolerances are fractions of it, so logits and probabilities are judged alike."""
    return max(1.0, float(np.abs(sample.references[kind]).max()))
