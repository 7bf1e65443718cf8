"""``edgetl bench variants``: one tiny comparison through the CLI, checked field by field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from edgetl.bench.variants import pareto_front
from edgetl.bench.variants_config import DEFAULT_CUT, VariantsConfig
from edgetl.cli import main
from edgetl.contracts.backbones import BACKBONES, get_backbone
from edgetl.errors import ConfigError

TINY_ARCH = "mobilenet_v3_small"
VARIANTS = ["frozen-features", "frozen", "cut-stage4", "partial-2", "full"]


@pytest.fixture(scope="module")
def compared(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Any]:
    """One run of the CLI on 3 tiny classes (random-init mobilenet_v3_small, --epochs auto, few timed calls)."""
    root = tmp_path_factory.mktemp("variants")
    rng = np.random.default_rng(2)
    colours = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200)}
    for part, n in (("train", 6), ("val", 3)):
        for cls, colour in colours.items():
            folder = root / "data" / part / cls
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = np.clip(np.array(colour) + rng.normal(0, 20, (48, 48, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / "{}.jpg".format(i))
    out = root / "out"
    args = [
        "-q",
        "bench",
        "variants",
        str(root / "data"),
        "--arch",
        TINY_ARCH,
        "--weights",
        "none",
        "--batch-size",
        "6",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--steps",
        "1",
        "--batch",
        "1,2",
        "--warmup",
        "1",
        "--iters",
        "2",
        "--rounds",
        "1",
        "--threads",
        "2",
        "--out",
        str(out),
    ]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EDGETL_HOME", str(root / "home"))
        patch.chdir(root)  # nothing may be written outside --out and EDGETL_HOME
        result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return {
        "output": result.output,
        "out": out,
        "root": root,
        "report": json.loads((out / "variants.json").read_text()),
    }


def test_one_row_per_variant_with_training_and_inference_fields(compared: Dict[str, Any]) -> None:
    report = compared["report"]
    assert [v["name"] for v in report["variants"]] == VARIANTS
    assert [v["cache"] for v in report["variants"]] == ["features", "ram", "features", "ram", "ram"]
    for variant in report["variants"]:
        training = variant["training"]
        for field in ("step_ms", "step_images_per_s", "epoch_s", "images_per_s", "peak_memory_mib"):
            assert training[field] > 0, (variant["name"], field)
        assert training["memory_kind"] == "peak RSS" and training["peak_memory_mib"] >= training["memory_before_mib"]
        assert 0 <= training["val_top1"] <= training["val_top5"] <= 1
        solved = variant["name"] in ("frozen-features", "cut-stage4")  # --epochs auto: as edgetl finetune
        assert training["epochs"] == ("solved" if solved else 5), variant["name"]
        assert (Path(training["run"]) / "best.pt").is_file() and Path(training["run"]).parent.parent == compared["out"]
        assert [i["backend"] for i in variant["inference"]] == ["torch", "onnx", "onnx-int8"]
        for entry in variant["inference"]:
            assert 0 <= entry["val_top1"] <= 1
            assert sorted(entry["latency"]) == ["1", "2"]
            for stats in entry["latency"].values():
                assert 0 < stats["p50_ms"] <= stats["p90_ms"] <= stats["p99_ms"] and stats["images_per_s"] > 0
    assert report["skipped"] == ["TensorRT fp16/int8 skipped: no CUDA device"]
    assert sorted(p.name for p in compared["root"].iterdir()) == ["data", "home", "out"]


def test_training_cost_and_model_size_order_as_expected(compared: Dict[str, Any]) -> None:
    by_name = {v["name"]: v for v in compared["report"]["variants"]}
    full, cut = by_name["full"], by_name["cut-stage4"]
    assert cut["params"] < full["params"] and cut["flops"] < full["flops"]
    assert by_name["frozen"]["params"] == full["params"] and by_name["frozen"]["flops"] == full["flops"]
    assert (
        0
        < by_name["frozen"]["training"]["params_trainable"]
        < by_name["partial-2"]["training"]["params_trainable"]
        < full["training"]["params_trainable"]
        == full["params"]
    )
    # the head-only step on cached features is far cheaper than a step through the whole network
    assert by_name["frozen-features"]["training"]["step_ms"] < full["training"]["step_ms"]


def test_pareto_points_and_outputs(compared: Dict[str, Any]) -> None:
    report, out = compared["report"], compared["out"]
    points = report["pareto"]
    assert len(points) == 15 and any(p["pareto"] for p in points)
    fastest = min(points, key=lambda p: (p["p50_ms"], -p["val_top1"]))
    assert fastest["pareto"]
    markdown = (out / "variants.md").read_text()
    assert markdown.startswith("# Variant comparison: mobilenet_v3_small")
    assert all(name in markdown for name in VARIANTS) and "ORT int8" in markdown
    assert "wrote {}".format(out / "variants.md") in compared["output"]
    assert "cut-stage4" in compared["output"]
    with Image.open(out / "variants.png") as png:
        png.verify()
        assert png.format == "PNG" and png.size[0] > 400 and png.size[1] > 300


def test_pareto_front_on_a_hand_made_table() -> None:
    # (latency ms, top-1)
    points = [
        (10.0, 0.90),
        (5.0, 0.85),
        (20.0, 0.95),
        (12.0, 0.88),
        (5.0, 0.80),
        (20.0, 0.95),
        (3.0, 0.50),
        (25.0, 0.94),
    ]
    # (12, .88) is beaten by (10, .90); (5, .80) by (5, .85) at equal latency; (25, .94) by (20, .95);
    # the two identical (20, .95) points dominate nothing of each other
    assert pareto_front(points) == [0, 1, 2, 5, 6]
    assert pareto_front([]) == []
    assert pareto_front([(1.0, 0.5)]) == [0]


def test_every_arch_has_a_valid_default_cut() -> None:
    assert set(DEFAULT_CUT) == set(BACKBONES)
    for arch, stage in DEFAULT_CUT.items():
        assert get_backbone(arch, stage).cut_at == stage
    assert VariantsConfig(arch="mobilenet_v2").variants()[2].cut_at == "stage5"


def test_bad_options_fail_with_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot cut mobilenet_v2 at 'mixed7'"):
        VariantsConfig(cut_at="mixed7")
    with pytest.raises(ConfigError, match="trainable_stages must be between"):
        VariantsConfig(trainable_stages=99)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    result = CliRunner().invoke(main, ["bench", "variants", "--out", str(tmp_path / "out"), "--device", "cpu"])
    assert result.exit_code == 1 and "is not empty; choose another --out" in result.output
    result = CliRunner().invoke(main, ["bench", "variants", "--batch", "1,x"])
    assert result.exit_code == 2 and "a comma-separated list of whole numbers" in result.output
