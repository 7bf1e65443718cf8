"""edgetl inspect / embed and the feature cache, on the tiny trained run (random-init mobilenet_v3_small)."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from edgetl.analysis.embeddings import cache_key, compute_features, list_images, pretrained_model, run_model
from edgetl.analysis.inspection import (
    activations_png,
    embed,
    filters_png,
    first_conv,
    similar_png,
    stage_maps,
    top_activating_png,
)
from edgetl.cli import main
from edgetl.errors import ConfigError


@pytest.fixture(scope="module")
def tiny_model(tiny_run: Path):
    return run_model(tiny_run)


@pytest.fixture(scope="module")
def tiny_images(tiny_run: Path) -> Path:
    return tiny_run.parent / "data" / "train"  # 3 classes x 8 images of 48 px


def _png_size(path: Path) -> tuple:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        return img.size


def test_filters_of_a_random_init_run_are_one_grid(tiny_model, tmp_path: Path) -> None:
    path, note = filters_png(tiny_model, tmp_path)  # tiny_run was trained with --weights none
    assert path == tmp_path / "filters.png" and "no pretrained" in note
    # one title line over a grid: 16 filters -> 4 x 4 cells of 32 px + 6 px gaps, 1 caption line each,
    # 1 panel title line of 14 px; the sheet widens to fit its title
    width, height = _png_size(path)
    assert height == (14 + 6) + (6 + 14 + 4 * (32 + 14 + 6)) and width >= 6 + 4 * (32 + 6)


def test_filters_side_by_side_when_fine_tuning_changed_them(tiny_model, tmp_path: Path) -> None:
    name, tuned = first_conv(tiny_model)
    before = torch.from_numpy(tuned + np.random.default_rng(0).normal(0, 0.3, tuned.shape).astype(np.float32))
    torch.save({name + ".weight": before}, tmp_path / "pre.pth")
    torch.save({name + ".weight": torch.from_numpy(tuned)}, tmp_path / "same.pth")

    path, note = filters_png(replace(tiny_model, weights_source=str(tmp_path / "pre.pth")), tmp_path / "changed")
    assert "changed" in note
    width, height = _png_size(path)
    grid = (6 + 4 * (32 + 6), 6 + 14 + 4 * (32 + 14 + 6))
    assert height == 2 * 14 + 6 + grid[1] and width >= 3 * grid[0] + 2 * 6  # pretrained, fine-tuned, change
    with Image.open(path) as img:
        pixels = np.asarray(img.convert("RGB")).astype(int)
    top = 2 * 14 + 6 + 20  # below the sheet title and the panel titles
    pretrained, tuned = pixels[top:, : grid[0]], pixels[top:, grid[0] + 6 : 2 * grid[0] + 6]
    assert not np.array_equal(pretrained, tuned)

    path, note = filters_png(replace(tiny_model, weights_source=str(tmp_path / "same.pth")), tmp_path / "same")
    assert "unchanged" in note and _png_size(path)[1] == 14 + 6 + grid[1]


def test_activations_show_the_strongest_channels_of_the_stage(tiny_model, tiny_images: Path, tmp_path: Path) -> None:
    image = sorted((tiny_images / "alpha").iterdir())[0]
    path, channels = activations_png(tiny_model, image, "stage3", tmp_path, count=8)
    assert path.name == "activations-stage3-{}.png".format(image.stem)
    maps = stage_maps(tiny_model, [image], "stage3")[0]
    assert channels == [int(c) for c in np.argsort(-maps.mean(axis=(1, 2)), kind="stable")[:8]]
    # input + 8 maps -> 3 x 3 tiles of 224 px with 2 caption lines, 2 title lines
    assert _png_size(path) == (6 + 3 * (224 + 6), 6 + 2 * 14 + 3 * (224 + 2 * 14 + 6))


@pytest.mark.parametrize("stage, message", [("nope", "has no stage"), ("pre_logits", "not convolutional")])
def test_activations_of_a_bad_stage_are_a_clear_error(
    tiny_model, tiny_images: Path, tmp_path: Path, stage: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        activations_png(tiny_model, next((tiny_images / "beta").iterdir()), stage, tmp_path)


@pytest.fixture(scope="module")
def pretrained(pretrained_mobilenet_v2: Path):
    """The real pretrained MobileNetV2: its features mean something (the tiny run's are nearly constant)."""
    return pretrained_model("mobilenet_v2")


def test_similar_returns_the_query_itself_first_at_distance_zero(
    pretrained, pattern_images: Path, tmp_path: Path
) -> None:
    query = pattern_images / "kind1" / "2.png"
    options = dict(workers=0, cache_dir=tmp_path / "cache")
    path, neighbours = similar_png(pretrained, query, pattern_images, tmp_path, k=8, **options)
    assert neighbours[0] == (query, 0.0)
    distances = [d for _, d in neighbours]
    assert len(neighbours) == 8 and distances == sorted(distances) and distances[1] > 1.0
    assert all(p.parent.name == "kind1" for p, _ in neighbours[:4])  # its own class comes next
    # query + 8 neighbours -> 5 columns x 2 rows of 160 px, 2 caption lines, 2 title lines
    assert _png_size(path) == (6 + 5 * (160 + 6), 6 + 2 * 14 + 2 * (160 + 2 * 14 + 6))
    # a copy outside DIR is computed on its own: the same image first, distance ~0 (rounding only)
    copy = tmp_path / "copy.png"
    shutil.copyfile(query, copy)
    _, from_copy = similar_png(pretrained, copy, pattern_images, tmp_path, k=3, **options)
    assert from_copy[0][0] == query and from_copy[0][1] < 1e-3
    assert [p for p, _ in from_copy[1:]] == [p for p, _ in neighbours[1:3]]


def test_top_activating_ranks_images_by_the_channel_peak(pretrained, pattern_images: Path, tmp_path: Path) -> None:
    path, rows = top_activating_png(
        pretrained, "stage2", 5, pattern_images, tmp_path, k=4, workers=0, cache_dir=tmp_path / "cache"
    )
    assert path.name == "top-stage2-ch5.png"
    assert _png_size(path) == (6 + 4 * (160 + 6), 6 + 2 * 14 + (160 + 2 * 14 + 6))
    paths, _ = list_images(pattern_images)
    peaks = stage_maps(pretrained, paths, "stage2")[:, 5].max(axis=(1, 2))
    expected = np.argsort(-peaks, kind="stable")[:4]
    assert [p for p, _ in rows] == [paths[i] for i in expected]
    assert [v for _, v in rows] == pytest.approx(peaks[expected].tolist(), rel=1e-4)
    with pytest.raises(ConfigError, match="--channel must be between 0 and 23"):  # stage2 has 24 channels
        top_activating_png(pretrained, "stage2", 24, pattern_images, tmp_path, workers=0, cache_dir=tmp_path / "cache")


def test_feature_cache_is_reused_and_invalidated_by_a_changed_file(
    pretrained, pattern_images: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    shutil.copytree(pattern_images / "kind2", data)
    paths, _ = list_images(data)
    cache = tmp_path / "cache"
    first = compute_features(pretrained, paths, workers=0, cache_dir=cache)
    assert [p.name for p in cache.iterdir()] == ["{}.npz".format(cache_key(pretrained, paths, "pooled"))]
    assert np.array_equal(compute_features(pretrained, paths, workers=0, cache_dir=cache), first)
    shutil.copyfile(pattern_images / "kind1" / "0.png", paths[0])  # same name, new content
    os.utime(paths[0], ns=(1, 1))
    second = compute_features(pretrained, paths, workers=0, cache_dir=cache)
    assert len(list(cache.iterdir())) == 2
    assert np.linalg.norm(second[0] - first[0]) > 1.0 and np.allclose(second[1:], first[1:], atol=1e-4)


def test_embed_writes_features_and_file_list(tiny_run: Path, tiny_model, tmp_path: Path) -> None:
    data = tiny_run.parent / "data"  # train/ and val/: 36 images
    result = CliRunner().invoke(
        main,
        ["-q", "embed", str(tiny_run), str(data), "--out", str(tmp_path / "f.npy"), "--workers", "0"],
        env={"EDGETL_HOME": str(tmp_path / "home")},
    )
    assert result.exit_code == 0, result.output
    assert "36 images x 1024 features" in result.output
    features = np.load(tmp_path / "f.npy")
    sidecar = json.loads((tmp_path / "f.json").read_text())
    assert features.shape == (36, 1024) and features.dtype == np.float32
    assert sidecar["shape"] == [36, 1024] and len(sidecar["files"]) == 36 and sidecar["arch"] == "mobilenet_v3_small"
    row = compute_features(tiny_model, [Path(sidecar["files"][7])], workers=0, cache=False)[0]
    assert np.allclose(features[7], row, atol=1e-4)
    with pytest.raises(ConfigError, match=r"must end in \.npy"):
        embed(tiny_model, data, tmp_path / "f.txt")


def test_inspect_cli_writes_pngs_and_says_where(tiny_run: Path, tiny_images: Path, tmp_path: Path) -> None:
    image = sorted((tiny_images / "beta").iterdir())[0]
    args = [
        "-q",
        "inspect",
        str(tiny_run),
        str(image),
        "--filters",
        "--activations",
        "--stage",
        "stage2",
        "--similar",
        "--data",
        str(tiny_images),
        "-k",
        "3",
        "--out",
        str(tmp_path / "pngs"),
        "--workers",
        "0",
    ]
    result = CliRunner().invoke(main, args, env={"EDGETL_HOME": str(tmp_path / "home")})
    assert result.exit_code == 0, result.output
    written = sorted(p.name for p in (tmp_path / "pngs").iterdir())
    assert written == [
        "activations-stage2-{}.png".format(image.stem),
        "filters.png",
        "similar-{}.png".format(image.stem),
    ]
    for name in written:
        assert "wrote {}".format(tmp_path / "pngs" / name) in result.output


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "choose at least one of"),
        (["--activations"], "--activations needs at least one IMAGE"),
        (["--top-activating", "--stage", "stage3", "--channel", "1"], "need --data DIR"),
        (["--filters", "--stage", "stage9", "--activations", "IMG"], "has no stage 'stage9'"),
    ],
)
def test_inspect_cli_errors_are_one_line(tiny_run: Path, tiny_images: Path, args: list, message: str) -> None:
    image = str(next((tiny_images / "alpha").iterdir()))
    result = CliRunner().invoke(main, ["inspect", str(tiny_run)] + [image if a == "IMG" else a for a in args])
    assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output
