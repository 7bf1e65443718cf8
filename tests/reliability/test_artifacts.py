"""Fault corpus, class 2: a model is served only when it is the bundle's. Every load checks the chosen file
against the sha256 in ``bundle.json`` (cached in ``$EDGETL_HOME``, never in the bundle), labels against the
exported classes and the model's outputs, and a run's checkpoint against the one the bundle was exported from."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from reliability.corpus import (
    assert_refused,
    cli,
    copy_tree,
    flip_byte,
    read_json,
    small_bundle,
    small_run,
    snapshot,
    succeeds,
)

from edgetl.train.checkpoint import load_checkpoint, save_checkpoints


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("EDGETL_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def source_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny trained run shared by the corpus (never changed: tests copy it)."""
    return small_run(tmp_path_factory.getbasetemp() / "reliability")


@pytest.fixture
def source_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``source_run`` exported into its own bundle folder (never changed: tests copy it)."""
    return small_bundle(tmp_path_factory.getbasetemp() / "reliability")


@pytest.fixture
def bundle(source_bundle: Path, tmp_path: Path) -> Path:
    return copy_tree(source_bundle, tmp_path / "bundle")


@pytest.fixture
def run(source_run: Path, tmp_path: Path) -> Path:
    return copy_tree(source_run, tmp_path / "run")


@pytest.fixture
def image(source_run: Path) -> Path:
    return sorted((source_run.parent / "data" / "val").rglob("*.png"))[0]


def retrain(run: Path) -> None:
    """A different best.pt, as another training would leave (the head moved)."""
    payload = load_checkpoint(run / "best.pt")
    bias = next(k for k in payload["model"] if k.endswith("bias") and k.startswith("head"))
    payload["model"][bias] = payload["model"][bias] + 1.0
    save_checkpoints([run / "best.pt"], {k: v for k, v in payload.items() if k != "format"})


def test_an_intact_bundle_classifies_and_keeps_its_hashes_outside_the_bundle(
    bundle: Path, image: Path, home: Path
) -> None:
    before = snapshot(bundle)
    for _ in range(2):  # the second load reads the cached hash
        result = cli(["predict", bundle, image])
        assert result.exit_code == 0 and "%" in result.output, result.output
    assert snapshot(bundle) == before
    assert len(list((home / "hashes").glob("*.json"))) == 1


def test_a_home_that_cannot_be_written_only_costs_the_hashing(bundle: Path, image: Path) -> None:
    before = snapshot(bundle)
    result = cli(["predict", bundle, image], env={"EDGETL_HOME": "/dev/null/edgetl"})
    assert result.exit_code == 0, result.output
    assert snapshot(bundle) == before


def test_a_flipped_byte_in_the_model_is_refused(bundle: Path, image: Path) -> None:
    flip_byte(bundle / "model.onnx")
    assert_refused(["predict", bundle, image], [bundle], "does not match the sha256 in bundle.json")


def test_a_flipped_byte_after_a_cached_check_is_still_refused(bundle: Path, image: Path) -> None:
    succeeds(["predict", bundle, image])  # caches the hash of the intact file
    flip_byte(bundle / "model.onnx")  # same size, same mtime: the cache must not vouch for it
    line = assert_refused(["predict", bundle, image], [bundle], "does not match the sha256")
    assert "re-export it with 'edgetl export" in line


def test_a_foreign_onnx_model_is_refused(bundle: Path, image: Path) -> None:
    model = onnx.load(str(bundle / "model.onnx"))
    model.doc_string = "another export"  # a valid model that is not the one the export checked
    onnx.save(model, str(bundle / "model.onnx"))
    assert_refused(["predict", bundle, image, "--backend", "onnx"], [bundle], "does not match the sha256")


def test_bench_latency_refuses_a_damaged_model_too(bundle: Path) -> None:
    flip_byte(bundle / "model.onnx")
    assert_refused(["bench", "latency", bundle, "--backend", "onnx"], [bundle], "does not match the sha256")


def test_verify_names_a_damaged_model(bundle: Path) -> None:
    flip_byte(bundle / "model.onnx")
    result = cli(["verify", bundle])
    assert result.exit_code == 3 and "changed after export" in result.output, result.output


def test_a_bundle_missing_its_onnx_does_not_fall_back_to_the_runs_checkpoint(bundle: Path, image: Path) -> None:
    (bundle / "model.onnx").unlink()
    assert_refused(["predict", bundle, image], [bundle], "lists model.onnx but the file is missing")


def test_labels_of_another_class_count_are_refused(bundle: Path, image: Path) -> None:
    (bundle / "labels.txt").write_text("cat\ndog\n")
    assert_refused(["predict", bundle, image], [bundle], "has 2 labels in labels.txt but was exported for 3 classes")


def test_renamed_labels_are_refused(bundle: Path, image: Path) -> None:
    (bundle / "labels.txt").write_text("cat\ndog\nbird\n")
    assert_refused(["predict", bundle, image], [bundle], "was exported for 3 classes (a, b, c)")


def test_bundle_json_that_is_not_json_is_refused(bundle: Path, image: Path) -> None:
    (bundle / "bundle.json").write_text('{"format": "edgetl-bundle-v1", "models": ')
    assert_refused(["predict", bundle, image], [bundle], "is not valid JSON")


def test_a_run_whose_checkpoint_has_other_classes_than_its_labels_is_not_applied_by_index(
    run: Path, image: Path
) -> None:
    (run / "labels.txt").write_text("a\nb\n")
    assert_refused(["predict", run, image, "--backend", "torch"], [run], "gives 3 outputs but labels.txt has 2")


def test_a_truncated_checkpoint_is_one_line(run: Path, image: Path) -> None:
    data = (run / "best.pt").read_bytes()
    (run / "best.pt").write_bytes(data[: len(data) // 2])
    assert_refused(["predict", run, image, "--backend", "torch"], [run], "cannot load checkpoint")


def test_the_torch_fallback_refuses_a_run_retrained_since_the_export(
    bundle: Path, run: Path, image: Path, tmp_path: Path
) -> None:
    manifest = read_json(bundle / "bundle.json")
    (bundle / "bundle.json").write_text(  # the bundle of this copy of the run (the export recorded its path)
        (bundle / "bundle.json").read_text().replace(manifest["run"], str(run.resolve()))
    )
    succeeds(["predict", bundle, image, "--backend", "torch"])
    retrain(run)
    assert_refused(["predict", bundle, image, "--backend", "torch"], [bundle, run], "no best.pt")
    succeeds(["predict", bundle, image])  # its ONNX is still the bundle's own model


def test_a_run_retrained_after_its_export_does_not_serve_the_old_onnx(run: Path, image: Path, tmp_path: Path) -> None:
    result = cli(["export", run, "--calib-dir", tmp_path / "calibration"])  # the run folder is its own bundle
    assert result.exit_code == 0, result.output
    succeeds(["predict", run, image])
    retrain(run)
    line = assert_refused(["predict", run, image], [run], "changed since this bundle was exported (retrained?)")
    assert "re-export it with 'edgetl export {}'".format(run) in line
