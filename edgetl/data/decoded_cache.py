"""Decoded-image cache: every image decoded and resized once into one memory-mapped uint8 file.

Layout: ``$EDGETL_HOME/decoded/<dataset>-<key>.npy``, shape (N, S, L, 3) with S the
preprocess ``resize_size`` and L = ceil(1.5 S). Each image is resized exactly like the eval path
(shorter side to S, PIL, the spec's interpolation) and stored with its shorter side along the
rows: portrait images are stored transposed, the longer side is centre-cropped to L (aspect
ratios beyond 3:2 lose their far edges) and the rest of the slot repeats the last column. A
sidecar ``.json`` holds the key and per-image geometry (``GEOMETRY_COLUMNS``, upright
coordinates). The file is memory-mapped, so every DataLoader worker reads the same page cache.

The key hashes the file list with sizes and mtimes, the preprocessing and the decoder, so a changed dataset
gets a new cache; the outdated one is deleted after the rebuild. On CUDA, JPEG files are decoded
on the GPU (nvjpeg via ``torchvision.io.decode_jpeg``) and resized there (antialiased bilinear:
within a few levels of PIL's, not bit-exact); other files and EXIF-rotated JPEGs go through PIL.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import time
import warnings
from pathlib import Path
from typing import Any, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from edgetl.contracts.preprocess import PreprocessSpec, center_crop_offsets, load_rgb, resize_shorter_side, resized_size
from edgetl.core.cleanup import DECODED_DIR
from edgetl.core.deps import require
from edgetl.core.fileio import atomic_path, atomic_write_text, built_once, edgetl_home, file_fingerprints
from edgetl.core.world import ProcessRole
from edgetl.data.folders import Sample
from edgetl.errors import DataError

torch = require("torch")
log = logging.getLogger(__name__)

CACHE_FORMAT = 1
MAX_ASPECT = 1.5
GEOMETRY_COLUMNS = ("width", "height", "transposed", "eval_top", "eval_left")
GPU_DECODE_BATCH = 64
_EXIF_ORIENTATION = 0x0112


def slot_shape(spec: PreprocessSpec) -> Tuple[int, int, int]:
    """(rows, columns, 3) of one stored image."""
    return spec.resize_size, int(math.ceil(spec.resize_size * MAX_ASPECT)), 3


def cache_bytes(count: int, spec: PreprocessSpec) -> int:
    """Size of the pixel file for ``count`` images."""
    rows, cols, channels = slot_shape(spec)
    return count * rows * cols * channels


def fit_slot(resized: np.ndarray, spec: PreprocessSpec) -> Tuple[np.ndarray, List[int]]:
    """Place an image already resized to shorter side S (HWC uint8) into a slot; return it and its geometry."""
    height, width = resized.shape[:2]
    transposed = height > width
    stored = resized.transpose(1, 0, 2) if transposed else resized
    rows, cols, _ = slot_shape(spec)
    long_side = stored.shape[1]
    offset = max(0, (long_side - cols) // 2)
    valid = min(long_side, cols)
    slot = np.empty((rows, cols, 3), dtype=np.uint8)
    slot[:, :valid] = stored[:, offset : offset + valid]
    slot[:, valid:] = slot[:, valid - 1 : valid]  # edge replicate: a crop touching the border never sees black
    eval_left, eval_top = center_crop_offsets(width, height, spec.input_size)
    if transposed:
        return slot, [rows, valid, 1, eval_top - offset, eval_left]
    return slot, [valid, rows, 0, eval_top, eval_left - offset]


def upright_size(geometry: Any) -> Tuple[Any, Any, Any]:
    """(width, height, transposed) of stored images as the model sees them, from geometry rows."""
    column = GEOMETRY_COLUMNS.index
    return geometry[:, column("width")], geometry[:, column("height")], geometry[:, column("transposed")].bool()


def decoder_name(device: Any) -> str:
    """Who decodes a cache built for ``device``: nvjpeg (PIL for the files it cannot take) on CUDA, else PIL.
    Their pixels differ by a few levels, so each has its own cache."""
    return "nvjpeg+pil" if device is not None and torch.device(device).type == "cuda" else "pil"


def cache_key(samples: Sequence[Sample], spec: PreprocessSpec, decoder: str = "pil") -> str:
    """sha256 of the cache format, the preprocessing, the decoder and every file's path, size and mtime."""
    try:
        files = file_fingerprints(sample.path for sample in samples)
    except OSError as exc:
        raise DataError("a dataset file changed while caching it: {}".format(exc)) from exc
    content = [CACHE_FORMAT, MAX_ASPECT, spec.resize_size, spec.input_size, spec.interpolation, decoder, files]
    return hashlib.sha256(json.dumps(content).encode("utf-8")).hexdigest()


class DecodedImages:
    """A built cache: lazily memory-mapped pixels (re-opened, not copied, in each worker) and geometry."""

    def __init__(self, path: Path, geometry: Any, key: str) -> None:
        self.path = Path(path)
        self.geometry = geometry  # int64 (N, len(GEOMETRY_COLUMNS))
        self.key = key
        self._pixels: Optional[Any] = None

    def __len__(self) -> int:
        return len(self.geometry)

    @property
    def pixels(self) -> Any:
        """(N, S, L, 3) uint8 tensor over the memory map (copy-on-write mode: never written)."""
        if self._pixels is None:
            self._pixels = torch.from_numpy(np.load(str(self.path), mmap_mode="c"))
        return self._pixels

    def __getstate__(self) -> dict:
        return dict(self.__dict__, _pixels=None)


def open_decoded_images(
    samples: Sequence[Sample],
    spec: PreprocessSpec,
    root: Path,
    part: str,
    cache_dir: Optional[Path] = None,
    workers: int = 0,
    device: Any = None,
) -> DecodedImages:
    """The decoded cache of ``samples`` (``part`` of the dataset at ``root``), built if missing or outdated.

    Built once per node: by local rank 0 of a distributed run (or the first of several jobs), under the
    dataset part's file lock, while the other processes wait on that lock with progress, then reuse it."""
    directory = Path(cache_dir or edgetl_home()) / DECODED_DIR
    directory.mkdir(parents=True, exist_ok=True)
    decoder = decoder_name(device)
    key = cache_key(samples, spec, decoder)
    # one cache per dataset part and decoder: a CPU run and a GPU run of the same data each keep theirs
    prefix = hashlib.sha256("{}|{}|{}".format(Path(root).resolve(), part, decoder).encode("utf-8")).hexdigest()[:12]
    stem = "{}-{}".format(prefix, key[:20])
    pixels_path, meta_path = directory / (stem + ".npy"), directory / (stem + ".json")

    def reuse() -> Optional[dict]:
        meta = _read_meta(meta_path)
        if meta is None or meta.get("key") != key or meta.get("decoder") != decoder or not pixels_path.is_file():
            return None
        log.info("decoded-image cache for %s: reusing %s", part, pixels_path)
        return meta

    def build() -> dict:
        outdated = [p for p in directory.glob(prefix + "-*.json") if p != meta_path]
        log.info(
            "decoded-image cache for %s (%d images): %s, building %s",
            part,
            len(samples),
            "the dataset changed" if outdated else "none yet",
            pixels_path,
        )
        meta = _build(samples, spec, pixels_path, meta_path, key, root, part, workers, device)
        _remove_stale(directory, prefix, keep=stem, same=(meta["root"], part, decoder))
        return meta

    builder = build if ProcessRole.from_env().builds_node_caches else None
    meta = built_once(directory / (prefix + ".lock"), "the decoded-image cache of " + part, reuse, builder)
    geometry = torch.tensor(meta["geometry"], dtype=torch.int64).reshape(-1, len(GEOMETRY_COLUMNS))
    return DecodedImages(pixels_path, geometry, key)


def _read_meta(path: Path) -> Optional[dict]:
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("format") == CACHE_FORMAT else None


def _remove_stale(directory: Path, prefix: str, keep: str, same: Tuple[str, str, str]) -> None:
    """Delete this dataset part's outdated caches of the same decoder (``same``: root, part, decoder; also
    those named before the decoder was part of the name) and caches of datasets whose folder no longer exists."""
    for meta_path in directory.glob("*.json"):
        meta = _read_meta(meta_path) or {}
        this = (meta.get("root"), meta.get("part"), meta.get("decoder")) == same
        outdated = (meta_path.stem.startswith(prefix + "-") or this) and meta_path.stem != keep
        if outdated or not Path(meta.get("root", "")).is_dir():
            for path in (meta_path, meta_path.with_suffix(".npy")):
                path.unlink(missing_ok=True)


def _build(
    samples: Sequence[Sample],
    spec: PreprocessSpec,
    pixels_path: Path,
    meta_path: Path,
    key: str,
    root: Path,
    part: str,
    workers: int,
    device: Any,
) -> dict:
    shape = (len(samples),) + slot_shape(spec)
    need, free = cache_bytes(len(samples), spec), shutil.disk_usage(str(pixels_path.parent)).free
    if need > free:
        raise DataError(
            "the decoded-image cache needs {:.2f} GB in {}, only {:.2f} GB free: use --cache none "
            "or set EDGETL_HOME to a bigger disk".format(need / 1e9, pixels_path.parent, free / 1e9)
        )
    started = time.perf_counter()
    geometry = np.zeros((len(samples), len(GEOMETRY_COLUMNS)), dtype=np.int64)
    gpu = decoder_name(device) != "pil"
    with atomic_path(pixels_path) as tmp:
        pixels = np.lib.format.open_memmap(str(tmp), mode="w+", dtype=np.uint8, shape=shape)
        for index, slot, row in _decoded_slots(samples, spec, workers, torch.device(device) if gpu else None):
            pixels[index] = slot
            geometry[index] = row
        pixels.flush()
        del pixels
    meta = {
        "format": CACHE_FORMAT,
        "key": key,
        "root": str(Path(root).resolve()),
        "part": part,
        "count": len(samples),
        "shape": list(shape),
        "preprocess": spec.to_dict(),
        "decoder": decoder_name(device),
        "build_s": time.perf_counter() - started,
        "geometry": geometry.tolist(),
    }
    atomic_write_text(meta_path, json.dumps(meta) + "\n")
    log.info("decoded %d images in %.1f s (%s, %.0f MB)", len(samples), meta["build_s"], meta["decoder"], need / 1e6)
    return meta


class _SlotSource:
    """Per file: the fitted slot decoded by PIL, or (with ``jpeg_bytes``) a plain JPEG's raw bytes."""

    def __init__(self, samples: Sequence[Sample], spec: PreprocessSpec, jpeg_bytes: bool) -> None:
        self.samples, self.spec, self.jpeg_bytes = list(samples), spec, jpeg_bytes

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Tuple[int, str, Any, Any]:
        path = self.samples[index].path
        try:
            if self.jpeg_bytes and _plain_jpeg(path):
                return index, "jpeg", np.fromfile(str(path), dtype=np.uint8), None
            slot, row = fit_slot(np.asarray(resize_shorter_side(load_rgb(path), self.spec)), self.spec)
            return index, "slot", slot, row
        except (DataError, OSError) as exc:
            return index, "error", str(exc).splitlines()[0], None


def _plain_jpeg(path: Path) -> bool:
    """A JPEG nvjpeg decodes as PIL would: RGB or grey, no EXIF rotation."""
    with Image.open(path) as img:
        return img.format == "JPEG" and img.mode in ("RGB", "L") and img.getexif().get(_EXIF_ORIENTATION, 1) == 1


def _decoded_slots(
    samples: Sequence[Sample], spec: PreprocessSpec, workers: int, device: Any
) -> Iterator[Tuple[int, np.ndarray, List[int]]]:
    loader = torch.utils.data.DataLoader(
        _SlotSource(samples, spec, jpeg_bytes=device is not None), batch_size=None, num_workers=workers
    )
    pending: List[Tuple[int, Any]] = []
    for index, kind, payload, row in loader:
        if kind == "error":
            raise DataError("cannot decode {}: {}".format(samples[index].path, payload))
        if kind == "slot":
            yield index, np.asarray(payload), row
            continue
        pending.append((index, torch.as_tensor(payload)))
        if len(pending) == GPU_DECODE_BATCH:
            yield from _decode_batch(pending, samples, spec, device)
            pending = []
    if pending:
        yield from _decode_batch(pending, samples, spec, device)


def _decode_batch(
    items: Sequence[Tuple[int, Any]], samples: Sequence[Sample], spec: PreprocessSpec, device: Any
) -> List[Tuple[int, np.ndarray, List[int]]]:
    """One nvjpeg batch; if nvjpeg fails on it (a file it rejects, a GPU hiccup), that batch is decoded
    with PIL instead of ending the whole cache build."""
    try:
        return list(decode_resize_on_gpu(items, spec, device))
    except RuntimeError as exc:
        log.warning(
            "nvjpeg could not decode a batch of %d images (%s); decoding them with PIL",
            len(items),
            str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
        )
    slots = []
    for index, _ in items:
        try:
            slot, row = fit_slot(np.asarray(resize_shorter_side(load_rgb(samples[index].path), spec)), spec)
        except (DataError, OSError) as exc:
            raise DataError("cannot decode {}: {}".format(samples[index].path, str(exc).splitlines()[0])) from exc
        slots.append((index, slot, row))
    return slots


def decode_resize_on_gpu(
    items: Sequence[Tuple[int, Any]], spec: PreprocessSpec, device: Any
) -> Iterator[Tuple[int, np.ndarray, List[int]]]:
    """Decode (index, JPEG bytes) items in one nvjpeg batch, resize on the GPU, fit into slots."""
    io = require("torchvision.io")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*decoding and encoding capabilities.*")
        images = io.decode_jpeg([data for _, data in items], mode=io.ImageReadMode.RGB, device=device)
    for (index, _), image in zip(items, images):
        width, height = resized_size(int(image.shape[2]), int(image.shape[1]), spec.resize_size)
        resized = torch.nn.functional.interpolate(
            image.unsqueeze(0).float(),
            size=(height, width),
            mode=spec.interpolation,
            antialias=spec.interpolation != "nearest",
        )
        pixels = resized.round_().clamp_(0, 255).to(torch.uint8)[0].permute(1, 2, 0).cpu().numpy()
        slot, row = fit_slot(pixels, spec)
        yield index, slot, row
