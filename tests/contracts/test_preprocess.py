"""One preprocessing definition: the torch-free eval path equals torchvision's eval transform."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgetl.contracts.preprocess import PreprocessSpec, eval_array, load_rgb, resized_size, torch_transforms
from edgetl.errors import ConfigError


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_numpy_eval_path_matches_torchvision(tmp_path: Path, interpolation: str) -> None:
    from edgetl.data.demo import ensure_demo_dataset

    spec = PreprocessSpec(interpolation=interpolation)
    transform = torch_transforms(spec, train=False)
    paths = sorted((ensure_demo_dataset() / "val").rglob("*.jpg"))[::9]
    portrait = Image.fromarray(np.random.default_rng(0).integers(0, 256, (301, 257, 3), dtype=np.uint8))
    portrait.save(tmp_path / "portrait.png")
    for path in paths + [tmp_path / "portrait.png"]:
        img = load_rgb(path)
        ours = eval_array(img, spec)
        theirs = transform(img).numpy()
        assert ours.shape == (3, 224, 224) and ours.dtype == np.float32
        assert np.abs(ours - theirs).max() <= 1e-5, path


def test_train_transform_is_random_resized_crop_and_flip() -> None:
    names = [type(t).__name__ for t in torch_transforms(PreprocessSpec(), train=True).transforms]
    assert names == ["RandomResizedCrop", "RandomHorizontalFlip", "ToTensor", "Normalize"]


def test_resized_size_follows_shorter_side() -> None:
    assert resized_size(500, 375, 256) == (341, 256)
    assert resized_size(375, 500, 256) == (256, 341)
    assert resized_size(300, 300, 256) == (256, 256)


def test_spec_round_trip_and_validation(tmp_path: Path) -> None:
    spec = PreprocessSpec(input_size=192, resize_size=220, interpolation="bicubic")
    spec.save(tmp_path / "preprocess.json")
    assert PreprocessSpec.load(tmp_path / "preprocess.json") == spec
    with pytest.raises(ConfigError, match="interpolation"):
        PreprocessSpec(interpolation="lanczos9")
    with pytest.raises(ConfigError, match="input_size <= resize_size"):
        PreprocessSpec(input_size=300, resize_size=256)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="bad.json is not valid JSON"):
        PreprocessSpec.load(tmp_path / "bad.json")
