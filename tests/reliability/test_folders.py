"""Fault corpus, class 1: run and bundle folders. edgetl writes only into a new or empty folder or one it owns
(``.edgetl-owner.json``), replaces only files it wrote and nobody changed, lets one process at a time write a
folder, and renames an export's files into place only at its end, ``bundle.json`` last."""

from __future__ import annotations

import os
from pathlib import Path

import onnx
import pytest
from reliability.corpus import (
    TINY,
    Process,
    assert_one_line_error,
    assert_refused,
    cli,
    copy_tree,
    images,
    read_json,
    small_bundle,
    small_run,
    succeeds,
)

from edgetl.core.ownership import Ownership, folder_lock
from edgetl.export.job import calibration_manifest_path


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


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return images(tmp_path_factory.mktemp("folders") / "data")


def finetune_args(data: Path, out: Path, *more: str) -> list:
    return ["finetune", str(data), *TINY, "--epochs", "1", "--cache", "none", "--out", str(out), *more]


def test_finetune_refuses_a_users_folder(data: Path, tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    for name in ("config.json", "labels.txt", "metrics.csv", "notes.md"):
        (project / name).write_text("the user's " + name)
    assert_refused(finetune_args(data, project), [project], "edgetl did not create it")


def test_finetune_refuses_a_run_that_lost_last_pt(data: Path, source_run: Path, tmp_path: Path) -> None:
    run = copy_tree(source_run, tmp_path / "run")
    (run / "last.pt").unlink()  # e.g. a full disk under an older edgetl
    assert_refused(finetune_args(data, run), [run], "stopped before saving last.pt")


def test_finetune_refuses_a_finished_run(data: Path, source_run: Path, tmp_path: Path) -> None:
    run = copy_tree(source_run, tmp_path / "run")
    assert_refused(finetune_args(data, run), [run], "already holds a run")


def test_finetune_refuses_a_bundle(data: Path, source_bundle: Path, tmp_path: Path) -> None:
    bundle = copy_tree(source_bundle, tmp_path / "bundle")
    assert_refused(finetune_args(data, bundle), [bundle], "is an edgetl bundle, not a run")


def test_finetune_refuses_a_file_as_out(data: Path, tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("keep me")
    assert_refused(finetune_args(data, target), [tmp_path], "is a file, not a folder")


def test_finetune_does_not_restart_an_unfinished_run_holding_a_users_file(
    data: Path, source_run: Path, tmp_path: Path
) -> None:
    run = copy_tree(source_run, tmp_path / "run")
    for name in ("best.pt", "last.pt", "metrics.csv", "summary.json"):
        (run / name).unlink()  # a run stopped before its first checkpoint
    (run / "notes.md").write_text("the user's notes")
    assert_refused(finetune_args(data, run), [run], "notes.md was not written by edgetl")


def test_finetune_into_a_folder_another_process_writes_is_refused_at_once(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    with folder_lock(out):  # the lock edgetl's writer holds (this process: a stand-in for another one)
        line = assert_refused(finetune_args(data, out), [out], "in use by another edgetl process")
    assert "{}@".format(os.getpid()) in line


def test_a_new_run_lists_every_file_it_wrote_with_its_hash(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "empty"
    out.mkdir()  # an empty folder is fine
    succeeds(finetune_args(data, out))
    owner = Ownership.read(out)
    assert owner is not None and owner.kind == "run"
    written = {p.name for p in out.iterdir() if not p.name.startswith(".")}
    assert set(owner.files) == written >= {"best.pt", "last.pt", "config.json", "labels.txt", "metrics.csv"}
    assert owner.first_change() is None and not list(owner.foreign_files())


def test_export_refuses_another_run(source_run: Path, tmp_path: Path) -> None:
    other = copy_tree(source_run, tmp_path / "other-run")
    assert_refused(["export", source_run, "--out", other], [other, source_run], "is another edgetl run")


def test_export_refuses_the_bundle_of_another_run(source_run: Path, source_bundle: Path, tmp_path: Path) -> None:
    run2 = copy_tree(source_run, tmp_path / "run2")
    bundle = copy_tree(source_bundle, tmp_path / "bundle")  # exported from source_run
    assert_refused(["export", run2, "--out", bundle], [bundle, run2], "is the bundle of another run")


def test_export_refuses_a_users_folder(source_run: Path, tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "labels.txt").write_text("the user's labels\n")
    assert_refused(["export", source_run, "--out", project], [project], "edgetl did not create it")


def test_export_does_not_replace_a_bundle_file_the_user_edited(source_run: Path, source_bundle: Path, tmp_path: Path):
    bundle = copy_tree(source_bundle, tmp_path / "bundle")
    (bundle / "labels.txt").write_text("cat\ndog\nbird\n")
    assert_refused(["export", source_run, "--out", bundle], [bundle], "labels.txt changed since edgetl wrote it")


def test_export_into_a_bundle_another_process_writes_is_refused(source_run: Path, source_bundle: Path, tmp_path: Path):
    bundle = copy_tree(source_bundle, tmp_path / "bundle")
    with folder_lock(bundle):
        assert_refused(["export", source_run, "--out", bundle], [bundle], "in use by another edgetl process")


def test_reexport_renames_its_files_into_place_with_bundle_json_last(
    source_run: Path, source_bundle: Path, tmp_path: Path
) -> None:
    bundle = copy_tree(source_bundle, tmp_path / "bundle")
    result = cli(["export", source_run, "--out", bundle])
    assert result.exit_code == 0, result.output
    assert not (bundle / ".export-tmp").exists()
    published = [p for p in bundle.iterdir() if not p.name.startswith(".")]
    renamed = {p.name: p.stat().st_ctime_ns for p in published}  # a rename sets ctime (mtime is the write's)
    assert renamed["bundle.json"] == max(renamed.values())
    owner = Ownership.read(bundle)
    assert owner is not None and owner.first_change() is None and not list(owner.foreign_files())


def test_reexport_replaces_a_target_folder_whole_but_never_a_users_file_in_it(source_run: Path, tmp_path: Path):
    bundle = tmp_path / "bundle"
    for _ in range(2):  # the second export replaces the folder the first one wrote
        succeeds(["export", source_run, "--out", bundle, "--for", "jetson-inference"])
        owner = Ownership.read(bundle)
        assert owner is not None and owner.first_change() is None and not list(owner.foreign_files())
        assert "jetson-inference/model.onnx" in owner.files and not (bundle / ".export-tmp").exists()
    (bundle / "jetson-inference" / "notes.txt").write_text("the user's notes\n")
    assert_refused(
        ["export", source_run, "--out", bundle, "--for", "jetson-inference"], [bundle], "notes.txt was not written"
    )


def test_a_failed_reexport_leaves_no_bundle_that_looks_valid(
    source_run: Path, source_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import edgetl.export.job as job

    real_export = job.export_onnx

    def export_then_corrupt(module, path, *args):  # shift the classifier bias: the parity gate fails
        real_export(module, path, *args)
        model = onnx.load(str(path))
        bias = next(t for t in model.graph.initializer if t.name.endswith("head.bias"))
        bias.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(bias) + 0.5, bias.name))
        onnx.save(model, str(path))

    bundle = copy_tree(source_bundle, tmp_path / "bundle")
    monkeypatch.setattr(job, "export_onnx", export_then_corrupt)
    assert_one_line_error(cli(["export", source_run, "--out", bundle]), code=3, match="model.onnx")
    assert read_json(bundle / "export_report.json")["status"] == "failed"
    assert not (bundle / "bundle.json").exists() and not (bundle / "model.onnx").exists()
    assert not (bundle / ".export-tmp").exists()
    assert_one_line_error(cli(["predict", bundle, source_run.parent / "data" / "val"]), match="neither")


def test_calibration_manifests_of_two_runs_of_the_same_name_are_kept_apart(tmp_path: Path) -> None:
    first, second = tmp_path / "a" / "photos", tmp_path / "b" / "photos"
    assert calibration_manifest_path(tmp_path, first) != calibration_manifest_path(tmp_path, second)
    assert calibration_manifest_path(tmp_path, first) == calibration_manifest_path(tmp_path, first / ".." / "photos")


def test_a_second_finetune_is_refused_while_the_first_runs_and_starts_once_it_is_killed(
    data: Path, tmp_path: Path, home: Path
) -> None:
    out = tmp_path / "run"
    slow = [
        a
        for a in finetune_args(images(tmp_path / "big", per_class=20, size=64), out)
        if a not in ("--cut-at", "stage1")
    ]
    first = Process(slow, home)  # the whole model: a first epoch of seconds, time enough to be refused in
    first.wait_for(lambda: (out / "config.json").is_file(), "the run's first files (written under its lock)")
    assert_one_line_error(cli(finetune_args(data, out)), match="in use by another edgetl process")
    first.kill()
    assert not (out / "best.pt").exists(), "the first run saved a checkpoint before it could be killed"
    with folder_lock(out):
        pass  # taken at once: the kernel released the killed holder's lock
    succeeds(finetune_args(data, out))  # its own unfinished run restarts there
    assert Ownership.read(out).first_change() is None
