"""Built-in demo dataset: four synthetic texture classes, generated once as JPEG files and cached."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from edgetl.core.fileio import edgetl_home
from edgetl.errors import ConfigError, DataError

DEMO_CLASSES = ("stripes", "checkers", "dots", "rings")
DEMO_VERSION = 1  # the renderer's: part of every image's seed, so a bigger dataset starts with the same images
# The default size: enough images that an INT8 export of the default demo run can be judged. Calibration takes
# 256 training images by default and the accuracy gate (edgetl.export.gate) needs at least 299 others to show
# a 1-point bound; 250 + 60 per class leave 744 held-out training images, and 240 val images.
DEMO_TRAIN_PER_CLASS, DEMO_VAL_PER_CLASS = 250, 60
_SPLITS = ("train", "val")
_MARKER = ".complete"


def default_demo_root(train_per_class: int = DEMO_TRAIN_PER_CLASS, val_per_class: int = DEMO_VAL_PER_CLASS) -> Path:
    """``demo-v{N}-{train}x{val}`` under ``$EDGETL_HOME`` (default ``~/.cache/edgetl``): one folder per size, so
    callers asking for different sizes never regenerate each other's dataset."""
    return edgetl_home() / "demo-v{}-{}x{}".format(DEMO_VERSION, train_per_class, val_per_class)


def _colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random foreground/background RGB colours whose luminances differ by at least 90/255."""
    weights = np.array([0.299, 0.587, 0.114])
    for _ in range(64):
        fg, bg = rng.integers(0, 256, size=(2, 3)).astype(np.float32)
        if abs(float(weights @ fg) - float(weights @ bg)) >= 90:
            return fg, bg
    return fg, (255.0 - fg if float(weights @ fg) < 128 else fg * 0.2)


def _pattern(cls: int, x: np.ndarray, y: np.ndarray, box: tuple, rng: np.random.Generator) -> np.ndarray:
    """Boolean texture mask for class index ``cls`` on pixel grids ``x``/``y`` (``box`` = region x0, y0, x1, y1)."""
    theta = rng.uniform(0, np.pi)
    u = x * np.cos(theta) + y * np.sin(theta) + rng.uniform(0, 100)
    v = -x * np.sin(theta) + y * np.cos(theta) + rng.uniform(0, 100)
    if cls == 0:  # stripes at a random angle, random period and duty cycle
        return np.mod(u / rng.uniform(9, 30), 1.0) < rng.uniform(0.35, 0.6)
    if cls == 1:  # rotated checkerboard with random cell size
        cell = rng.uniform(10, 30)
        return (np.floor(u / cell) + np.floor(v / cell)).astype(np.int64) % 2 == 0
    if cls == 2:  # rotated lattice of round dots
        spacing = rng.uniform(14, 36)
        radius = spacing * rng.uniform(0.2, 0.36)
        du = (np.mod(u / spacing, 1.0) - 0.5) * spacing
        dv = (np.mod(v / spacing, 1.0) - 0.5) * spacing
        return du * du + dv * dv < radius * radius
    # concentric rings centred inside the middle of the textured region
    cx, cy = (rng.uniform(a + 0.25 * (b - a), a + 0.75 * (b - a)) for a, b in ((box[0], box[2]), (box[1], box[3])))
    period = rng.uniform(9, 26)
    dist = np.sqrt((x - cx) ** 2 + (y - cy) ** 2)
    return np.mod(dist / period, 1.0) < rng.uniform(0.35, 0.6)


def render_texture(cls: int, rng: np.random.Generator) -> Image.Image:
    """Draw one image: a texture filling a random rectangle or ellipse (40-90% of the area) on a background."""
    w, h = (int(n) for n in rng.integers(160, 401, size=2))  # independent width and height
    ellipse = bool(rng.random() < 0.5)
    frac = rng.uniform(0.4, 0.75) / (np.pi / 4) if ellipse else rng.uniform(0.4, 0.9)
    fw = rng.uniform(frac, 1.0)
    fw, fh = (fw, frac / fw) if rng.random() < 0.5 else (frac / fw, fw)
    rw, rh = fw * w, fh * h
    x0, y0 = rng.uniform(0, w - rw), rng.uniform(0, h - rh)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
    if ellipse:
        region = ((x - x0 - rw / 2) / (rw / 2)) ** 2 + ((y - y0 - rh / 2) / (rh / 2)) ** 2 <= 1.0
    else:
        region = (x >= x0) & (x < x0 + rw) & (y >= y0) & (y < y0 + rh)
    mask = region & _pattern(cls, x, y, (x0, y0, x0 + rw, y0 + rh), rng)
    fg, bg = _colours(rng)
    shade = 1.0 + rng.uniform(-0.12, 0.12) * ((x / w - 0.5) + (y / h - 0.5))  # gentle lighting gradient
    img = np.where(mask[..., None], fg, bg) * shade[..., None]
    img += rng.normal(0.0, rng.uniform(3, 9), size=img.shape)
    return Image.fromarray(np.clip(img + 0.5, 0, 255).astype(np.uint8), "RGB")


def _marker_text(train_per_class: int, val_per_class: int) -> str:
    info = {"version": DEMO_VERSION, "classes": list(DEMO_CLASSES), "train": train_per_class, "val": val_per_class}
    return json.dumps(info, sort_keys=True) + "\n"


def _is_complete(root: Path, marker: str) -> bool:
    """True if ``root`` holds a finished dataset whose marker matches ``marker``."""
    try:
        return (root / _MARKER).read_text(encoding="utf-8") == marker
    except OSError:
        return False


def _pid_alive(pid: int) -> bool:
    """False for our own pid (a leftover from an earlier process); True where it cannot be probed safely."""
    if pid == os.getpid() or os.name != "posix":
        return pid != os.getpid()
    try:
        os.kill(pid, 0)  # signal 0: existence check only
    except ProcessLookupError:
        return False
    except OSError:
        pass
    return True


def _remove_stale_tmp(root: Path) -> None:
    """Delete ``<root>.tmp-<pid>`` folders left by processes that no longer run."""
    prefix = root.name + ".tmp-"
    for path in root.parent.iterdir():
        pid = path.name[len(prefix) :]
        if path.name.startswith(prefix) and pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(str(path), ignore_errors=True)


def ensure_demo_dataset(
    root: Path | None = None, train_per_class: int = DEMO_TRAIN_PER_CLASS, val_per_class: int = DEMO_VAL_PER_CLASS
) -> Path:
    """Generate (once; cached) the demo dataset as real JPEG files in root/train/<class>/ and
    root/val/<class>/; return root."""
    if train_per_class < 1 or val_per_class < 1:
        raise ConfigError("demo dataset needs at least one train and one val image per class")
    root = Path(root) if root is not None else default_demo_root(train_per_class, val_per_class)
    marker = _marker_text(train_per_class, val_per_class)
    if _is_complete(root, marker):
        return root
    if root.is_dir() and not set(p.name for p in root.iterdir()) <= set(_SPLITS) | {_MARKER}:
        raise DataError("{} exists and is not an edgetl demo dataset; choose another folder".format(root))
    root.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(root)
    tmp = root.parent / "{}.tmp-{}".format(root.name, os.getpid())
    try:
        for split_id, (split, count) in enumerate(zip(_SPLITS, (train_per_class, val_per_class))):
            for cls, name in enumerate(DEMO_CLASSES):
                folder = tmp / split / name
                folder.mkdir(parents=True, exist_ok=True)
                for i in range(count):
                    rng = np.random.default_rng([DEMO_VERSION, split_id, cls, i])
                    render_texture(cls, rng).save(str(folder / "{}_{:04d}.jpg".format(name, i)), "JPEG", quality=90)
        (tmp / _MARKER).write_text(marker, encoding="utf-8")
        if root.exists() and not _is_complete(root, marker):
            shutil.rmtree(str(root), ignore_errors=True)  # stale partial or different counts
        try:
            os.rename(str(tmp), str(root))
        except OSError:
            if not _is_complete(root, marker):  # another process did not finish it for us
                raise DataError("could not create the demo dataset at {}".format(root))
    finally:
        if tmp.exists():
            shutil.rmtree(str(tmp), ignore_errors=True)
    return root
