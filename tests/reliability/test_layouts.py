"""Issue 12, class 6: dataset layout edge cases — a class named ``train``, a ``train/`` without ``val/``,
class names that labels.txt cannot hold, 16-bit images, linked sub-folders and broken links."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from reliability.inputs_corpus import assert_refused

from edgetl.contracts.preprocess import to_rgb
from edgetl.data.folders import load_dataset
from edgetl.errors import DataError


def test_a_flat_dataset_with_a_class_named_train_is_flat(make_image_folder) -> None:
    root = make_image_folder(counts={"train": 5, "zebra": 5})
    for val_split in (None, 0.4):
        split = load_dataset(root, val_split)
        assert split.classes == ["train", "zebra"] and split.layout.startswith("val-split")
        assert len(split.train) + len(split.val) == 10


def test_a_flat_dataset_with_classes_train_and_val_is_flat(make_image_folder) -> None:
    split = load_dataset(make_image_folder(counts={"train": 5, "val": 5}), 0.4)
    assert split.classes == ["train", "val"] and split.layout == "val-split 0.4"


@pytest.mark.parametrize("val_split", [[], ["--val-split", "0.2"]])
def test_train_class_folders_without_val_say_what_to_do(make_image_folder, tmp_path: Path, monkeypatch, val_split):
    """The same message with or without --val-split (it used to send the user from one error to the other)."""
    root = make_image_folder(counts={"a": 3, "b": 3}, name="data/train").parent
    monkeypatch.chdir(tmp_path)
    message = "has train/<class>/ folders but no val/: add val/<class>/ folders"
    assert_refused(["finetune", root, "--out", tmp_path / "run", *val_split], message, [tmp_path])


def test_train_and_val_with_val_split_is_refused(make_image_folder, tmp_path: Path, monkeypatch) -> None:
    root = make_image_folder(counts={"a": 2, "b": 2}, split=True)
    monkeypatch.chdir(tmp_path)
    assert_refused(["finetune", root, "--val-split", "0.3"], "already has train/ and val/ folders", [tmp_path])


@pytest.mark.parametrize("name", ["two\nlines", "tab\there", " padded", "carriage\r"])
def test_a_class_name_labels_txt_cannot_hold_is_refused(make_image_folder, tmp_path: Path, monkeypatch, name) -> None:
    root = make_image_folder(counts={"plain": 2, name: 2})
    monkeypatch.chdir(tmp_path)
    assert_refused(["finetune", root, "--out", tmp_path / "run"], "a class name cannot hold control characters", [root])
    assert not (tmp_path / "run").exists()


def test_16_bit_images_scale_by_the_bit_depth_not_by_their_maximum(tmp_path: Path) -> None:
    """Two exposures of one scene: the dark frame (max 200 of 65535) must stay dark, not be read as 8-bit."""
    scene = np.linspace(0.0, 1.0, 32 * 32).reshape(32, 32)
    bright, dark = (scene * 65535).astype(np.uint16), (scene * 200).astype(np.uint16)
    for name, pixels in (("bright", bright), ("dark", dark)):
        Image.fromarray(pixels).save(tmp_path / "{}.png".format(name))
    with Image.open(tmp_path / "bright.png") as img:
        assert img.mode.startswith("I")
        bright_rgb = np.asarray(to_rgb(img))
    with Image.open(tmp_path / "dark.png") as img:
        dark_rgb = np.asarray(to_rgb(img))
    assert bright_rgb.max() == 255 and dark_rgb.max() <= 1  # 200 / 257 rounds to 1: nearly black, as it is
    grey = Image.fromarray((scene * 65535).astype(np.uint16)).convert("I")  # Pillow < 11 opened 16-bit PNGs as "I"
    assert np.asarray(to_rgb(grey)).max() == 255


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symbolic links")
def test_linked_sub_folders_and_broken_links_are_listed_as_skipped(make_image_folder, tmp_path: Path) -> None:
    root = make_image_folder(counts={"a": 3, "b": 3})
    elsewhere = make_image_folder(counts={"x": 2}, name="elsewhere")
    (root / "a" / "linked").symlink_to(elsewhere / "x", target_is_directory=True)
    (root / "b" / "gone.jpg").symlink_to(tmp_path / "missing.jpg")
    (root / "b" / "good_link.jpg").symlink_to(root / "a" / "a_000.jpg")  # a link to an image is an image
    split = load_dataset(root, 0.34)
    reasons = {path.name: reason for path, reason in split.skipped}
    assert reasons == {"linked": "symbolic link to a folder (not followed)", "gone.jpg": "broken symbolic link"}
    assert len(split.train) + len(split.val) == 7
    split.save(tmp_path)
    listed = (tmp_path / "skipped.txt").read_text()
    assert "linked\tsymbolic link to a folder" in listed and "gone.jpg\tbroken symbolic link" in listed


def test_a_dataset_of_one_class_is_refused(make_image_folder) -> None:
    with pytest.raises(DataError, match="needs at least 2 class folders, found 1"):
        load_dataset(make_image_folder(counts={"only": 3}), 0.3)
