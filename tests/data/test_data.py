"""Dataset scanning, splitting and bad-input handling (edgetl.data.folders, edgetl.contracts.preprocess.load_rgb)."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgetl.contracts.preprocess import load_rgb
from edgetl.data.folders import DatasetSplit, load_dataset, scan_class_folders
from edgetl.errors import DataError


def _jpeg_bytes(size: int = 32, colour=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, "JPEG")
    return buffer.getvalue()


def test_bad_files_are_skipped_counted_and_listed(make_image_folder, tmp_path: Path) -> None:
    root = make_image_folder({"a": 3, "b": 3})
    good = _jpeg_bytes(64)
    (root / "a" / "zero.jpg").write_bytes(b"")
    (root / "a" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (root / "b" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    (root / "b" / "notes.txt").write_text("not an image")
    (root / "b" / "fake.jpg").write_text("text pretending to be a jpeg")
    classes, samples, skipped = scan_class_folders(root)
    assert classes == ["a", "b"]
    assert len(samples) == 6
    reasons = {p.name: r for p, r in skipped}
    assert set(reasons) == {"zero.jpg", "truncated.jpg", "corrupt.png", "notes.txt", "fake.jpg"}
    assert reasons["zero.jpg"] == "zero-byte file"
    assert "truncated" in reasons["truncated.jpg"].lower()

    split = load_dataset(root, val_split=0.34, seed=0)
    run = tmp_path / "run"
    run.mkdir()
    split.save(run)
    listed = (run / "skipped.txt").read_text().splitlines()
    assert len(listed) == 5 and all("\t" in line for line in listed)


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda root: None, "dataset folder not found"),
        (lambda root: (root / "only").mkdir(parents=True), "at least 2 class folders"),
        (lambda root: [(root / c).mkdir(parents=True) for c in ("a", "b")], "no readable images in"),
    ],
)
def test_unusable_folders_give_clear_errors(tmp_path: Path, setup, message: str) -> None:
    root = tmp_path / "data"
    setup(root)
    with pytest.raises(DataError, match=message):
        load_dataset(root, val_split=0.2)


def test_empty_class_is_named(make_image_folder) -> None:
    root = make_image_folder({"cats": 3, "dogs": 3})
    (root / "empty_class").mkdir()
    (root / "empty_class" / "broken.jpg").write_bytes(b"")
    with pytest.raises(DataError, match="empty_class"):
        load_dataset(root, val_split=0.2)


def test_val_classes_must_match_train(make_image_folder) -> None:
    root = make_image_folder({"a": 2, "b": 2}, split=True)
    (root / "val" / "b").rename(root / "val" / "c")
    with pytest.raises(DataError, match=r"only in train \['b'\], only in val \['c'\]"):
        load_dataset(root)


def test_train_val_layout_rejects_val_split_and_needs_val(make_image_folder) -> None:
    root = make_image_folder({"a": 2, "b": 2}, split=True)
    with pytest.raises(DataError, match="drop --val-split"):
        load_dataset(root, val_split=0.2)
    split = load_dataset(root)
    assert split.layout == "train/val folders" and len(split.train) == 4 and len(split.val) == 4
    shutil.rmtree(root / "val")
    with pytest.raises(DataError, match="no val/: add val/<class>/ folders"):
        load_dataset(root)


def test_stratified_split_is_deterministic_and_per_class(make_image_folder, tmp_path: Path) -> None:
    root = make_image_folder({"a": 10, "b": 5})
    first = load_dataset(root, val_split=0.2, seed=7)
    again = load_dataset(root, val_split=0.2, seed=7)
    other = load_dataset(root, val_split=0.2, seed=8)
    assert first.val == again.val and first.train == again.train
    assert first.val != other.val
    val_labels = [s.label for s in first.val]
    assert val_labels.count(0) == 2 and val_labels.count(1) == 1
    assert not set(first.val) & set(first.train)
    run = tmp_path / "run"
    run.mkdir()
    first.save(run)
    reloaded = DatasetSplit.load(run)
    assert reloaded.val == first.val and reloaded.classes == ["a", "b"]
    assert json.loads((run / "split.json").read_text())["layout"] == "val-split 0.2"


def test_split_needs_two_images_per_class(make_image_folder) -> None:
    root = make_image_folder({"a": 1, "b": 4})
    with pytest.raises(DataError, match="at least 2 per class"):
        load_dataset(root, val_split=0.5)
    with pytest.raises(DataError, match="between 0 and 1"):
        load_dataset(root, val_split=1.5)


def _save(img: Image.Image, path: Path, **kwargs) -> Path:
    img.save(path, **kwargs)
    return path


def test_load_rgb_converts_every_mode(tmp_path: Path) -> None:
    grey = _save(Image.new("L", (8, 6), 77), tmp_path / "grey.png")
    rgba = Image.new("RGBA", (8, 6), (255, 0, 0, 255))
    rgba.putpixel((0, 0), (0, 0, 0, 0))  # fully transparent: composited on white
    rgba_path = _save(rgba, tmp_path / "rgba.png")
    palette = _save(Image.new("RGB", (8, 6), (0, 128, 0)).convert("P"), tmp_path / "palette.gif")
    cmyk = _save(Image.new("CMYK", (8, 6), (0, 255, 255, 0)), tmp_path / "cmyk.jpg")
    sixteen = _save(Image.fromarray(np.full((6, 8), 65535, dtype=np.uint16)), tmp_path / "sixteen.png")
    for path in (grey, rgba_path, palette, cmyk, sixteen):
        img = load_rgb(path)
        assert img.mode == "RGB" and img.size == (8, 6), path.name
    assert load_rgb(grey).getpixel((1, 1)) == (77, 77, 77)
    assert load_rgb(rgba_path).getpixel((0, 0)) == (255, 255, 255)
    assert load_rgb(rgba_path).getpixel((1, 1)) == (255, 0, 0)
    assert load_rgb(sixteen).getpixel((1, 1)) == (255, 255, 255)  # scaled, not clipped to garbage
    red, green, blue = load_rgb(cmyk).getpixel((1, 1))
    assert red > 200 and green < 60 and blue < 60


def test_load_rgb_applies_exif_orientation(tmp_path: Path) -> None:
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    path = _save(img, tmp_path / "rotated.jpg", exif=exif)
    assert load_rgb(path).size == (20, 40)


def test_load_rgb_unreadable_is_a_data_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.jpg"
    path.write_bytes(b"nope")
    with pytest.raises(DataError, match="unreadable image .*broken.jpg"):
        load_rgb(path)
