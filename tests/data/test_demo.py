"""Tests for the built-in demo dataset (edgetl.data.demo)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

import edgetl.data.demo as demo
from edgetl.data.demo import DEMO_CLASSES, DEMO_VERSION, default_demo_root, ensure_demo_dataset
from edgetl.errors import ConfigError, DataError

TRAIN, VAL = 3, 2


def _files(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.jpg"))}


def test_layout_and_counts(tmp_path: Path) -> None:
    root = ensure_demo_dataset(tmp_path / "demo", train_per_class=TRAIN, val_per_class=VAL)
    assert root == tmp_path / "demo"
    assert (root / ".complete").is_file()
    for split, count in (("train", TRAIN), ("val", VAL)):
        assert sorted(p.name for p in (root / split).iterdir()) == sorted(DEMO_CLASSES)
        for cls in DEMO_CLASSES:
            assert len(list((root / split / cls).glob("*.jpg"))) == count
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]  # no tmp folder left behind


def test_files_are_jpegs_of_varied_sizes(tmp_path: Path) -> None:
    root = ensure_demo_dataset(tmp_path / "demo", train_per_class=TRAIN, val_per_class=VAL)
    sizes = set()
    for path in root.rglob("*.jpg"):
        assert path.read_bytes()[:3] == b"\xff\xd8\xff"
        with Image.open(path) as img:
            assert img.format == "JPEG" and img.mode == "RGB"
            img.load()
            w, h = img.size
            assert 160 <= w <= 400 and 160 <= h <= 400
            sizes.add(img.size)
    assert len(sizes) > 10


def test_deterministic_and_train_val_differ(tmp_path: Path) -> None:
    a = _files(ensure_demo_dataset(tmp_path / "a", train_per_class=TRAIN, val_per_class=VAL))
    b = _files(ensure_demo_dataset(tmp_path / "b", train_per_class=TRAIN, val_per_class=VAL))
    assert a == b
    assert len(set(a.values())) == len(a)  # every image distinct, so train and val seeds differ
    assert a["train/dots/dots_0000.jpg"] != a["val/dots/dots_0000.jpg"]


def test_cached_second_call_does_not_regenerate(tmp_path: Path) -> None:
    root = ensure_demo_dataset(tmp_path / "demo", train_per_class=TRAIN, val_per_class=VAL)
    probe = root / "train" / "rings" / "rings_0000.jpg"
    os.utime(probe, (1_000_000, 1_000_000))
    assert ensure_demo_dataset(root, train_per_class=TRAIN, val_per_class=VAL) == root
    assert probe.stat().st_mtime == 1_000_000


def test_different_counts_regenerate(tmp_path: Path) -> None:
    root = ensure_demo_dataset(tmp_path / "demo", train_per_class=TRAIN, val_per_class=VAL)
    ensure_demo_dataset(root, train_per_class=2, val_per_class=1)
    assert len(list((root / "train" / "stripes").glob("*.jpg"))) == 2
    assert len(list((root / "val" / "stripes").glob("*.jpg"))) == 1


def test_stale_tmp_and_partial_root_are_replaced(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    own = tmp_path / "demo.tmp-{}".format(os.getpid())
    dead = tmp_path / "demo.tmp-999999999"
    for folder in (own / "train" / "dots", dead / "val", root / "train" / "dots"):
        folder.mkdir(parents=True)
        (folder / "junk.jpg").write_bytes(b"not a jpeg")
    assert ensure_demo_dataset(root, train_per_class=TRAIN, val_per_class=VAL) == root
    assert not (root / "train" / "dots" / "junk.jpg").exists()
    assert len(list((root / "train" / "dots").glob("*.jpg"))) == TRAIN
    assert not own.exists() and not dead.exists()


def test_refuses_to_overwrite_foreign_folder(tmp_path: Path) -> None:
    root = tmp_path / "mine"
    root.mkdir()
    (root / "precious.txt").write_text("keep me")
    with pytest.raises(DataError):
        ensure_demo_dataset(root, train_per_class=1, val_per_class=1)
    assert (root / "precious.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_rejects_bad_counts(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        ensure_demo_dataset(tmp_path / "demo", train_per_class=0)


def test_default_root_honours_edgetl_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGETL_HOME", str(tmp_path))
    assert default_demo_root() == tmp_path / "demo-v{}-250x60".format(DEMO_VERSION)
    assert default_demo_root(60, 20) == tmp_path / "demo-v{}-60x20".format(DEMO_VERSION)  # each size its own
    monkeypatch.delenv("EDGETL_HOME")
    assert default_demo_root() == Path.home() / ".cache" / "edgetl" / "demo-v{}-250x60".format(DEMO_VERSION)


def test_a_bigger_demo_starts_with_the_smaller_ones_images(tmp_path: Path) -> None:
    small = _files(ensure_demo_dataset(tmp_path / "small", train_per_class=TRAIN, val_per_class=VAL))
    big = _files(ensure_demo_dataset(tmp_path / "big", train_per_class=TRAIN + 2, val_per_class=VAL + 1))
    assert all(big[name] == data for name, data in small.items()) and len(big) > len(small)


def test_losing_a_race_uses_the_winners_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_rename = os.rename

    def racing_rename(src: str, dst: str) -> None:
        shutil.copytree(src, dst)  # another process finishes first
        real_rename(src, dst)  # so ours fails: the target is not empty

    monkeypatch.setattr(demo.os, "rename", racing_rename)
    root = ensure_demo_dataset(tmp_path / "demo", train_per_class=1, val_per_class=1)
    assert (root / ".complete").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]
