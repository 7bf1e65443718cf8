"""Fault corpus, class 1: a bundle holds one lineage. A re-export after retraining removes what the old
checkpoint left (``--for`` folders it does not write again), refuses with one line when the user changed a file
there, ``verify`` and ``doctor`` flag a bundle mixing checkpoints, and export refuses a best.pt the run's
training did not write."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Iterator, Tuple

import pytest
from reliability.corpus import TINY, assert_refused, cli, copy_tree, images, read_json, small_run, succeeds

from edgetl.contracts.bundle import BUNDLE_FORMAT
from edgetl.core.fileio import sha256_file
from edgetl.core.ownership import Ownership
from edgetl.export.targets.deepstream import CONFIG

OLD_TARGETS = ("deepstream", "jetson-inference")


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("EDGETL_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture(scope="module")
def retrained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tuple[Path, Path, Path]]:
    """(run, old, fresh): a run exported to ``old`` with ``--for deepstream --for jetson-inference``, then trained
    on with ``--resume`` until its best.pt changed, and exported again (no --for) to ``fresh``. Tests copy the
    bundles (they keep their run)."""
    root = tmp_path_factory.mktemp("lineage")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EDGETL_HOME", str(root / "home"))
        run = copy_tree(small_run(tmp_path_factory.getbasetemp() / "reliability"), root / "run")
        old, fresh = root / "old", root / "fresh"
        targets = [a for name in OLD_TARGETS for a in ("--for", name)]
        succeeds(["export", run, "--out", old, *targets, "--calib-dir", root / "calibration"])
        trained = sha256_file(run / "best.pt")
        for epochs in (3, 5, 8):  # a later epoch becomes best.pt (higher val top-1, or the same with a lower loss)
            succeeds(["finetune", "--out", run, "--resume", "--epochs", str(epochs)])
            if sha256_file(run / "best.pt") != trained:
                break
        assert sha256_file(run / "best.pt") != trained, "resuming never produced a new best.pt"
        succeeds(["export", run, "--out", fresh, "--calib-dir", root / "calibration"])
        yield run, old, fresh


def reexport(run: Path, bundle: Path, *more: str) -> list:
    return ["export", run, "--out", bundle, "--calib-dir", bundle.parent / "calibration", *more]


def as_older_format(bundle: Path) -> None:
    """Rewrite ``bundle.json`` as edgetl wrote it before bundles recorded their lineage (and list it so)."""
    manifest = read_json(bundle / "bundle.json")
    del manifest["lineage"]
    (bundle / "bundle.json").write_text(json.dumps(dict(manifest, format="edgetl-bundle-v1")))
    owner = Ownership.read(bundle)
    assert owner is not None
    owner.record(["bundle.json"])


@pytest.mark.parametrize("older_format", [False, True], ids=["v2", "v1"])
def test_a_reexport_after_retraining_removes_the_old_checkpoints_target_folders(
    retrained, tmp_path: Path, older_format: bool
) -> None:
    run, old, _ = retrained
    bundle = copy_tree(old, tmp_path / "bundle")
    if older_format:
        as_older_format(bundle)
    result = succeeds(reexport(run, bundle, "--for", "triton"))
    assert not any((bundle / name).exists() for name in OLD_TARGETS) and (bundle / "triton").is_dir()
    assert "removed (made from another checkpoint than this best.pt): deepstream, jetson-inference" in result.output
    checkpoint = sha256_file(run / "best.pt")
    manifest = read_json(bundle / "bundle.json")
    assert manifest["format"] == BUNDLE_FORMAT and manifest["checkpoint_sha256"] == checkpoint
    lineage = manifest["lineage"]
    assert lineage["checkpoint_sha256"] == checkpoint
    assert set(lineage["artifacts"]) == {"model.onnx", "triton", "triton-trt"}
    assert {e["checkpoint_sha256"] for e in lineage["artifacts"].values()} == {checkpoint}
    assert lineage["artifacts"]["model.onnx"] == {
        "checkpoint_sha256": checkpoint, "precision": "fp32", "from": None, "step": "onnx export",
        "derived_weights_sha256": None,
    }  # fmt: skip
    owner = Ownership.read(bundle)
    assert owner is not None and owner.first_change() is None and not list(owner.foreign_files())
    assert not [name for name in owner.files if name.split("/")[0] in OLD_TARGETS]
    succeeds(["verify", bundle])
    # the same checkpoint again, without --for: its triton folder stays, and stays listed
    succeeds(reexport(run, bundle))
    manifest = read_json(bundle / "bundle.json")
    assert (bundle / "triton" / "README.md").is_file() and set(manifest["targets"]) == {"triton"}
    assert set(manifest["lineage"]["artifacts"]) == {"model.onnx", "triton", "triton-trt"}


def test_a_reexport_refuses_to_remove_a_stale_folder_holding_a_users_change(retrained, tmp_path: Path) -> None:
    run, old, _ = retrained
    bundle = copy_tree(old, tmp_path / "bundle")
    config = bundle / "deepstream" / CONFIG
    config.write_text(config.read_text() + "# the user's tuning\n")
    stale = bundle / "deepstream"
    line = assert_refused(
        reexport(run, bundle, "--for", "triton"), [tmp_path, run], f"{stale} is from another checkpoint"
    )
    assert f"{config} changed since edgetl wrote it" in line


@pytest.mark.parametrize("older_format", [False, True], ids=["v2", "v1"])
def test_verify_and_doctor_flag_a_bundle_mixing_checkpoints(retrained, tmp_path: Path, older_format: bool) -> None:
    _, old, fresh = retrained
    bundle = copy_tree(fresh, tmp_path / "bundle")
    if older_format:
        as_older_format(bundle)
    succeeds(["verify", bundle])
    result = succeeds(["doctor", bundle])
    assert "bundle lineage" in result.output and "every artifact from checkpoint" in result.output
    shutil.copytree(str(old / "jetson-inference"), str(bundle / "jetson-inference"))  # the old checkpoint's
    result = cli(["verify", bundle])
    assert result.exit_code == 3, result.output
    old_sha = read_json(old / "bundle.json")["checkpoint_sha256"]
    assert f"jetson-inference: made from checkpoint {old_sha[:12]}" in result.output
    result = cli(["doctor", bundle, "--json"])
    assert result.exit_code == 1, result.output
    (item,) = [i for i in json.loads(result.output)["items"] if i["name"] == "bundle lineage"]
    assert item["status"] == "mismatch" and item["broken"] and "jetson-inference from checkpoint" in item["detail"]


def test_export_refuses_a_best_pt_copied_from_another_run(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    run = copy_tree(small_run(tmp_path_factory.getbasetemp() / "reliability"), tmp_path / "run")
    data = images(tmp_path / "two", per_class=4, classes=("x", "y"))
    succeeds(["finetune", data, *TINY, "--epochs", "1", "--out", tmp_path / "two-class"])
    shutil.copyfile(str(tmp_path / "two-class" / "best.pt"), str(run / "best.pt"))  # 2 classes into a 3-class run
    for out in (["--out", tmp_path / "bundle"], []):
        line = assert_refused(["export", run, *out], [tmp_path], "best.pt changed since edgetl wrote it")
        assert "not the checkpoint this run trained" in line and not (tmp_path / "bundle").exists()
