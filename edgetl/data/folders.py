"""Datasets: scan class folders (skipping unreadable files), split, and feed training.

Accepted layouts: ``ROOT/train/<class>/*`` + ``ROOT/val/<class>/*``, or a flat ``ROOT/<class>/*``
with a deterministic stratified ``val_split`` (a ``train/`` that holds images, not class folders, is a class
named ``train``). Unreadable files (corrupt, truncated, zero-byte, not an image, broken links) and linked
sub-folders (not followed) are skipped at scan time, counted and listed — never a crash mid-epoch.
``split.json`` records absolute paths, so a run is usable from any working directory.
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from PIL import Image

from edgetl.contracts.preprocess import load_rgb
from edgetl.contracts.schema import fixed, is_int, is_str, list_of, read_json, record
from edgetl.core.fileio import atomic_write_text
from edgetl.data.sampling import stratified_split
from edgetl.errors import CheckpointError, DataError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset(".jpg .jpeg .png .bmp .gif .tif .tiff .webp .ppm .pgm .pbm .pnm .jfif .ico .tga".split())


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int


@dataclass
class DatasetSplit:
    """Class names, train/val samples and the files skipped while scanning."""

    root: Path
    classes: List[str]
    train: List[Sample]
    val: List[Sample]
    layout: str  # "train/val folders" or "val-split F" (+ ", test-split F")
    skipped: List[Tuple[Path, str]] = field(default_factory=list)
    test: List[Sample] = field(default_factory=list)  # --test-split: held out from training and selection

    def to_dict(self) -> Dict[str, Any]:
        """Absolute paths: export, evaluate and resume may run in another directory than training did."""

        def rows(samples: Sequence[Sample]) -> List[List[Any]]:
            return [[str(Path(s.path).absolute()), s.label] for s in samples]

        return {
            "root": str(Path(self.root).absolute()),
            "layout": self.layout,
            "classes": self.classes,
            "train": rows(self.train),
            "val": rows(self.val),
            "test": rows(self.test),
        }

    def save(self, run_dir: Path) -> None:
        """Write ``split.json`` and ``skipped.txt`` (one ``path<TAB>reason`` per line) into the run."""
        atomic_write_text(run_dir / "split.json", json.dumps(self.to_dict(), indent=1) + "\n")
        atomic_write_text(run_dir / "skipped.txt", "".join("{}\t{}\n".format(p, r) for p, r in self.skipped))

    @classmethod
    def load(cls, run_dir: Path) -> "DatasetSplit":
        """Read ``split.json`` (checked against ``SPLIT_SCHEMA``: one-line CheckpointError naming it). The
        relative paths of runs made before edgetl 0.3 are resolved against the first of the working directory
        and the run folder's ancestors that holds the recorded dataset root."""
        path = Path(run_dir) / SPLIT
        data = read_json(path, SPLIT_SCHEMA)
        classes = data["classes"]
        for part in ("train", "val"):
            bad = [label for _, label in data[part] if not 0 <= label < len(classes)]
            if bad:
                raise CheckpointError(
                    "{} is malformed: {} label {} is not one of the {} classes".format(path, part, bad[0], len(classes))
                )
        base = _base_of(Path(data["root"]), Path(run_dir))
        return cls(
            base / data["root"],
            classes,
            [Sample(base / p, label) for p, label in data["train"]],
            [Sample(base / p, label) for p, label in data["val"]],
            data["layout"],
            test=[Sample(Path(p), label) for p, label in data.get("test", [])],
        )


SPLIT = "split.json"
_SAMPLES = list_of(fixed(is_str, is_int))
SPLIT_SCHEMA = record(
    {"root": is_str, "layout": is_str, "classes": list_of(is_str, min_length=2), "train": _SAMPLES, "val": _SAMPLES}
)


def _base_of(root: Path, run_dir: Path) -> Path:
    """Where a relative dataset ``root`` of an old ``split.json`` lives: the working directory, or the nearest
    ancestor of the run folder holding it (a run in ``models/x`` made from the project directory). An absolute
    root: ``Path()`` (joining leaves it as is)."""
    if root.is_absolute() or root.is_dir():
        return Path()
    for base in Path(run_dir).resolve().parents:
        if (base / root).is_dir():
            return base
    return Path()


def image_files(root: Path, recursive: bool = True) -> List[Path]:
    """The files under ``root`` (or directly in it) with an image suffix, hidden files skipped, sorted:
    the one image lister (whether PIL can read them is checked separately, by ``check_image``)."""
    found = Path(root).rglob("*") if recursive else Path(root).iterdir()
    return sorted(p for p in found if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)


def check_image(path: Path) -> Optional[str]:
    """None if ``path`` decodes fully as an image, else the reason it does not."""
    try:
        if path.stat().st_size == 0:
            return "zero-byte file"
        with Image.open(path) as img:
            img.draft("RGB", (64, 64))  # JPEG: decode at reduced scale, still reads the whole stream
            img.load()
        return None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        return "{}: {}".format(type(exc).__name__, exc)


def _class_dirs(root: Path) -> List[Path]:
    if not root.is_dir():
        raise DataError("dataset folder not found: {}".format(root))
    dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(dirs) < 2:
        raise DataError("{} needs at least 2 class folders, found {}".format(root, len(dirs)))
    for d in dirs:
        if d.name != d.name.strip() or any(ord(c) < 32 or ord(c) == 127 for c in d.name):
            raise DataError(
                "class folder {!r} in {}: a class name cannot hold control characters (newlines, tabs) or start or "
                "end with a space (labels.txt holds one name a line); rename it".format(d.name, root)
            )
    return dirs


def _unlisted(path: Path) -> Optional[str]:
    """Why a file-system entry under a class folder is not a candidate image: None for a regular file (or a link
    to one); a reason for a broken link or a linked folder (not followed: a link may loop or leave the dataset);
    "" for what is skipped without a word (hidden names, real sub-folders, which are scanned)."""
    if path.name.startswith("."):
        return ""
    if path.is_symlink():
        if not path.exists():
            return "broken symbolic link"
        if path.is_dir():
            return "symbolic link to a folder (not followed)"
    return None if path.is_file() else ""


def scan_class_folders(root: Path, workers: int = 8) -> Tuple[List[str], List[Sample], List[Tuple[Path, str]]]:
    """Classes (sorted folder names), readable samples and skipped files of a folder of class folders."""
    dirs = _class_dirs(root)
    entries = [(p, label, _unlisted(p)) for label, d in enumerate(dirs) for p in sorted(d.rglob("*"))]
    candidates = [(p, label) for p, label, why in entries if why is None]
    links = [(p, str(why)) for p, _, why in entries if why]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        reasons = list(
            pool.map(
                lambda c: (
                    check_image(c[0])
                    if c[0].suffix.lower() in IMAGE_SUFFIXES
                    else "not an image file (suffix {!r})".format(c[0].suffix)
                ),
                candidates,
            )
        )
    samples = [Sample(p, label) for (p, label), reason in zip(candidates, reasons) if reason is None]
    skipped = links + [(p, reason) for (p, _), reason in zip(candidates, reasons) if reason is not None]
    counts = [0] * len(dirs)
    for sample in samples:
        counts[sample.label] += 1
    empty = [d.name for d, n in zip(dirs, counts) if n == 0]
    if empty:
        more = " and {} more".format(len(empty) - 5) if len(empty) > 5 else ""
        raise DataError("class folder(s) with no readable images in {}: {}{}".format(root, ", ".join(empty[:5]), more))
    return [d.name for d in dirs], samples, skipped


def load_dataset(
    root: Path, val_split: Optional[float] = None, seed: int = 0, test_split: Optional[float] = None
) -> DatasetSplit:
    """Scan ``root`` (train/ + val/ folders, or flat class folders split by ``val_split``); with ``test_split``,
    that fraction per class of the training images (of all images in a flat folder) is held out as ``test``."""
    split = _load_dataset(root, val_split, seed, test_split)
    if test_split is not None:
        split.layout += ", test-split {}".format(test_split)
    return split


def _load_dataset(root: Path, val_split: Optional[float], seed: int, test_split: Optional[float]) -> DatasetSplit:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError("dataset folder not found: {}".format(root))
    if _holds_folders(root / "train"):  # else a train/ of images is a class named "train"
        if not (root / "val").is_dir():
            raise DataError(
                "{} has train/<class>/ folders but no val/: add val/<class>/ folders with the same classes, or move "
                "the class folders up into {} to hold out --val-split of them".format(root, root)
            )
        if val_split is not None:
            raise DataError("{} already has train/ and val/ folders; drop --val-split".format(root))
        classes, train, skipped = scan_class_folders(root / "train")
        train, test = stratified_split(train, test_split, seed) if test_split else (train, [])
        val_classes, val, val_skipped = scan_class_folders(root / "val")
        if val_classes != classes:
            only_train = sorted(set(classes) - set(val_classes))
            only_val = sorted(set(val_classes) - set(classes))
            raise DataError(
                "val classes differ from train classes: only in train {}, only in val {}".format(only_train, only_val)
            )
        return DatasetSplit(root, classes, train, val, "train/val folders", skipped + val_skipped, test)
    fraction = 0.2 if val_split is None else val_split
    if not 0.0 < fraction < 1.0:
        raise DataError("--val-split must be between 0 and 1, got {}".format(fraction))
    if val_split is None:
        log.info("no train/ and val/ folders in %s: holding out %.0f%% per class for validation", root, fraction * 100)
    classes, samples, skipped = scan_class_folders(root)
    samples, test = stratified_split(samples, test_split, seed) if test_split else (samples, [])
    train, val = stratified_split(samples, fraction, seed)
    return DatasetSplit(root, classes, train, val, "val-split {}".format(fraction), skipped, test)


def _holds_folders(path: Path) -> bool:
    """Whether ``path`` is a folder with (non-hidden) sub-folders: the ``train/`` of a train/val layout."""
    return path.is_dir() and any(p.is_dir() and not p.name.startswith(".") for p in path.iterdir())


class ImageDataset:
    """Map-style dataset (torch DataLoader compatible) of decoded, transformed images."""

    def __init__(
        self, samples: Sequence[Sample], transform: Callable[[Image.Image], Any], load: Callable[[Path], Any] = load_rgb
    ) -> None:
        self.samples = list(samples)
        self.transform, self.load = transform, load  # load: a device geometry decodes as the device does

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Tuple[Any, int]:
        sample = self.samples[index]
        return self.transform(self.load(sample.path)), sample.label
