"""Fault corpus, class 7: faults in the middle of a run. An image that vanishes, a full disk (writes sent to
``/dev/full``: the kernel's own ENOSPC) or a kill at any point leaves one line, the files written before as they
were, and a run that continues with ``--resume``; ``edgetl clean`` removes what killed edgetl processes left
behind in folders edgetl owns and in its caches, and changes no byte of anything else named like edgetl's."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import torch
from reliability.corpus import (
    TINY,
    Process,
    assert_one_line_error,
    assert_refused,
    cli,
    copy_tree,
    dead_pid,
    files_named,
    glob_any,
    images,
    small_bundle,
    small_run,
    snapshot,
    succeeds,
    tree_digest,
)

from edgetl.core.fileio import temporary_prefix
from edgetl.core.ownership import Ownership
from edgetl.train.checkpoint import load_checkpoint


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
def data(tmp_path: Path) -> Path:
    return images(tmp_path / "data", per_class=4, size=32)


def finetune_args(data: Path, out: Path, epochs: int = 2, *more: str) -> list:
    return ["finetune", str(data), *TINY, "--epochs", str(epochs), "--cache", "none", "--out", str(out), *more]


def resume_args(out: Path) -> list:
    return ["finetune", "--out", str(out), "--resume"]


@pytest.fixture
def at_epoch_line() -> Iterator[dict]:
    """``{n: [actions]}``: run when epoch n's log line is written, after its training and evaluation and before
    its checkpoints are saved (a real event of the run, not a timer)."""
    actions: dict = {}

    class Hook(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            for epoch, todo in actions.items():
                if record.getMessage().startswith("epoch {}/".format(epoch)):
                    for action in todo:
                        action()

    logger = logging.getLogger("edgetl.train.loop")
    hook, level = Hook(), logger.level
    logger.addHandler(hook)
    logger.setLevel(logging.INFO)  # setLevel, not .level: it clears the loggers' cached isEnabledFor
    yield actions
    logger.removeHandler(hook)
    logger.setLevel(level)


def disk_full(monkeypatch: pytest.MonkeyPatch, names: tuple, after: int = 0) -> Callable[..., Any]:
    """From the ``after``-th save on, torch.save of the checkpoints ``names`` writes to /dev/full."""
    real_save, calls = torch.save, []

    def save(obj, f, *args, **kwargs):
        if isinstance(f, str) and any(Path(f).name.startswith("." + name + ".") for name in names):
            calls.append(f)
            if len(calls) > after:
                return real_save(obj, "/dev/full", *args, **kwargs)
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    return real_save


@pytest.mark.parametrize("workers", ["0", "1"])
def test_an_image_deleted_during_training_stops_with_one_line_and_the_run_resumes(
    data: Path, tmp_path: Path, at_epoch_line: dict, workers: str
) -> None:
    out, victim = tmp_path / "run", sorted((data / "train" / "b").iterdir())[0]
    content = victim.read_bytes()
    at_epoch_line[1] = [victim.unlink]
    args = finetune_args(data, out)
    args[args.index("--workers") + 1] = workers  # 1: the error comes from a DataLoader worker process
    line = assert_one_line_error(cli(args), match="stopped in epoch 2")
    assert str(victim) in line and "--resume" in line
    assert load_checkpoint(out / "last.pt")["epoch"] == 0
    victim.write_bytes(content)
    succeeds(resume_args(out))
    assert load_checkpoint(out / "last.pt")["epoch"] == 1


def test_a_full_disk_at_the_first_checkpoint_leaves_no_checkpoint_and_no_temporary_file(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    disk_full(monkeypatch, ("best.pt",))
    line = assert_one_line_error(cli(finetune_args(data, out, 1)), match="no space left on the device")
    assert "unexpected pos" not in line and "start the run again" in line
    assert not (out / "best.pt").exists() and not (out / "last.pt").exists()
    assert not files_named(out, "*.tmp")


def test_a_full_disk_later_keeps_the_last_checkpoints_and_the_run_resumes(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, at_epoch_line: dict
) -> None:
    out = tmp_path / "run"
    saved: dict = {}
    at_epoch_line[2] = [lambda: saved.update(snapshot(out / "best.pt", out / "last.pt"))]  # epoch 1's
    real_save = disk_full(monkeypatch, ("last.pt",), after=1)  # epoch 2's last.pt
    line = assert_one_line_error(cli(finetune_args(data, out)), match="no space left on the device")
    assert "--resume" in line
    assert len(saved) == 2 and snapshot(out / "best.pt", out / "last.pt") == saved
    assert not files_named(out, "*.tmp")
    monkeypatch.setattr(torch, "save", real_save)  # space freed
    succeeds(resume_args(out))


def test_a_full_disk_writing_metrics_is_one_line_and_resumable(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import edgetl.train.loop as loop

    real_write = loop.atomic_write_text

    def write(path: Path, text: str) -> None:
        if Path(path).name != "metrics.csv":
            return real_write(path, text)
        with open("/dev/full", "w") as full:  # the kernel's ENOSPC
            full.write(text)

    monkeypatch.setattr(loop, "atomic_write_text", write)
    assert_one_line_error(cli(finetune_args(data, tmp_path / "run", 1)), match="no space left on the device")
    assert (tmp_path / "run" / "last.pt").is_file()


def test_a_full_disk_during_a_reexport_leaves_the_bundle_as_it_was(
    source_run: Path, source_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import edgetl.export.job as job

    def write_manifest(root: Path, manifest: dict) -> None:
        with open("/dev/full", "w") as full:
            full.write(str(manifest))

    bundle = copy_tree(source_bundle, tmp_path / "bundle")
    monkeypatch.setattr(job, "write_manifest", write_manifest)
    assert_refused(["export", source_run, "--out", bundle], [bundle], "no space left on the device")
    assert not (bundle / ".export-tmp").exists()


def test_a_run_killed_in_its_cache_build_leaves_a_temporary_file_that_clean_removes(tmp_path: Path, home: Path) -> None:
    data = images(tmp_path / "data", per_class=80, size=96)
    args = finetune_args(data, tmp_path / "run", 1)
    args[args.index("--cache") + 1] = "ram"
    process = Process(args, home)
    process.wait_for(glob_any(home / "decoded", ".*.tmp"), "the decoded-image cache's temporary file")
    process.kill()
    leftover = files_named(home / "decoded", ".*.tmp")
    assert len(leftover) == 1
    listed = cli(["clean", "--dry-run"])
    assert "would remove {} (temporary file of a dead process".format(leftover[0]) in listed.output
    assert leftover[0].exists()
    succeeds(["clean"])
    assert not leftover[0].exists()


def test_a_run_killed_mid_training_resumes_and_its_dead_temporaries_are_cleared(tmp_path: Path, home: Path) -> None:
    data, out = images(tmp_path / "data", per_class=12, size=48), tmp_path / "run"
    process = Process(finetune_args(data, out, 3), home)
    process.wait_for(lambda: (out / "last.pt").is_file(), "the first checkpoint")
    process.kill()
    assert load_checkpoint(out / "last.pt")["epoch"] < 2, "the run ended before it could be killed"
    stale = out / (temporary_prefix("last.pt").replace(str(os.getpid()), str(dead_pid())) + "x.tmp")
    stale.write_bytes(b"\0" * 1024)  # what a kill during a checkpoint's write leaves
    succeeds(resume_args(out))
    assert load_checkpoint(out / "last.pt")["epoch"] == 2 and not stale.exists()


def test_an_export_killed_midway_leaves_the_previous_bundle_working(
    source_run: Path, source_bundle: Path, tmp_path: Path, home: Path
) -> None:
    bundle = copy_tree(source_bundle, tmp_path / "bundle")
    image = sorted((source_run.parent / "data" / "val").rglob("*.png"))[0]
    before = snapshot(bundle)
    process = Process(["export", source_run, "--out", bundle], home)
    process.wait_for(lambda: (bundle / ".export-tmp" / "model.onnx").is_file(), "the staged model")
    process.kill()
    assert {k: v for k, v in snapshot(bundle).items() if ".export-tmp" not in k} == before
    succeeds(["predict", bundle, image])
    listed = cli(["clean", "--dry-run", bundle]).output
    assert "staging folder of an export that did not finish" in listed
    succeeds(["clean", bundle])
    assert not (bundle / ".export-tmp").exists()
    assert snapshot(bundle) == before


def dead_temporary(folder: Path, name: str) -> Path:
    """What a write of ``name`` by an edgetl process killed since leaves in ``folder`` (``atomic_path``)."""
    return folder / (temporary_prefix(name).replace(str(os.getpid()), str(dead_pid())) + "a.tmp")


def test_clean_removes_only_temporaries_of_dead_writers_in_an_owned_folder(tmp_path: Path) -> None:
    folder = tmp_path / "bundle"
    folder.mkdir()
    owner = Ownership.claim(folder, "bundle", str(tmp_path / "run"))
    (folder / "deepstream").mkdir()
    (folder / "deepstream" / "labels.txt").write_text("a\n")
    owner.record(["deepstream/labels.txt"])  # a target folder, listed through its file
    dead, in_target = dead_temporary(folder, "model.onnx"), dead_temporary(folder / "deepstream", "config.txt")
    live = folder / (temporary_prefix("model.onnx") + "b.tmp")  # this process: alive
    old, fresh = folder / ".best.pt.old.tmp", folder / ".best.pt.new.tmp"  # names without a writer
    for path in (dead, in_target, live, old, fresh):
        path.write_bytes(b"x" * 2048)
    os.utime(str(old), (time.time() - 7200, time.time() - 7200))
    before = snapshot(folder)
    listed = cli(["clean", "--dry-run", folder]).output
    assert "would remove {} (temporary file of a dead process".format(dead) in listed
    assert "would remove {} (temporary file of a dead process".format(in_target) in listed
    assert "would remove 2 item(s)" in listed and str(live) not in listed
    assert "not edgetl's, left alone: {} (no edgetl process in its name)".format(old) in listed
    assert "not edgetl's, left alone: {} (no edgetl process in its name)".format(fresh) in listed
    assert snapshot(folder) == before
    succeeds(["clean", folder])
    assert not dead.exists() and not in_target.exists()
    assert {k: v for k, v in before.items() if k not in (str(dead), str(in_target))} == snapshot(folder)


def test_clean_removes_caches_whose_dataset_is_gone_and_old_ones_on_request(tmp_path: Path, home: Path) -> None:
    from edgetl.contracts.preprocess import PreprocessSpec
    from edgetl.data.decoded_cache import open_decoded_images
    from edgetl.data.folders import load_dataset

    kept, gone = images(tmp_path / "kept", per_class=2, size=24), images(tmp_path / "gone", per_class=2, size=24)
    for root in (kept, gone):
        open_decoded_images(load_dataset(root).train, PreprocessSpec(input_size=16, resize_size=20), root, "train")
    orphan = home / "train-features" / "0123456789ab-{}-{}.pt".format("d" * 20, "e" * 16)  # as edgetl names it
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"features of a decoded cache that is gone")
    for path in sorted(gone.rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    gone.rmdir()
    listed = cli(["clean", "--dry-run"]).output
    assert listed.count("decoded-image cache of a dataset that is gone") == 2 and str(orphan) in listed
    assert "not used for" not in listed
    aged = cli(["clean", "--dry-run", "--older-than", "0s"]).output
    assert aged.count("decoded-image cache not used for 0s") == 2  # the kept dataset's .json and .npy
    succeeds(["clean"])
    assert len(list((home / "decoded").glob("*.npy"))) == 1 and not orphan.exists()


def test_clean_drops_hashes_of_files_that_are_gone(
    source_run: Path, source_bundle: Path, tmp_path: Path, home: Path
) -> None:
    bundle = copy_tree(source_bundle, tmp_path / "bundle")
    image = sorted((source_run.parent / "data" / "val").rglob("*.png"))[0]
    succeeds(["predict", bundle, image])
    entries = list((home / "hashes").glob("*.json"))
    assert len(entries) == 1
    assert "hash of a file" not in cli(["clean", "--dry-run"]).output
    (bundle / "model.onnx").unlink()
    assert "hash of a file that is gone or changed" in cli(["clean"]).output and not entries[0].exists()


def test_clean_with_a_bad_age_is_one_line() -> None:
    assert_one_line_error(cli(["clean", "--older-than", "soon"]), match="--older-than takes a number and a unit")


def test_clean_of_a_missing_folder_is_one_line(tmp_path: Path) -> None:
    kept = tmp_path / "bundle"
    kept.mkdir()
    Ownership.claim(kept, "bundle")
    stale = dead_temporary(kept, "model.onnx")
    stale.write_bytes(b"x")
    assert_one_line_error(cli(["clean", kept, tmp_path / "missing"]), match="missing does not exist")
    assert stale.exists()  # refused before any work
    (tmp_path / "notes.txt").write_text("a file")
    assert_one_line_error(cli(["clean", tmp_path / "notes.txt"]), match="is a file, not a folder")


def edgetl_like_names(root: Path) -> None:
    """A user's files named like edgetl's: hidden ``*.tmp`` files and folders (an hour old and more), an
    ``.export-tmp`` folder, temporary-file names of a dead process on this host, artifact names."""
    hour_ago = time.time() - 7200
    for folder in (root, root / "sub"):
        (folder / ".export-tmp").mkdir(parents=True)
        (folder / ".export-tmp" / "important.txt").write_text("the user's")
        (folder / ".cache.tmp").mkdir()
        (folder / ".cache.tmp" / "part.bin").write_bytes(b"\1" * 64)
        for name in (".draft.tmp", ".notes.txt.tmp", "model.onnx", "best.pt"):
            (folder / name).write_bytes(name.encode() * 8)
        dead_temporary(folder, "notes.txt").write_text("a draft")
        for path in folder.iterdir():
            os.utime(str(path), (hour_ago, hour_ago))


def test_clean_changes_no_byte_of_a_tree_edgetl_never_wrote(tmp_path: Path) -> None:
    tree = tmp_path / "projects" / "userproj"
    edgetl_like_names(tree)
    unreadable = tree / "looks-owned"  # a manifest edgetl cannot read does not make the folder edgetl's
    edgetl_like_names(unreadable)
    (unreadable / ".edgetl-owner.json").write_text("{ not json")
    elsewhere = tmp_path / "elsewhere"  # an owned folder reached only through a link: not followed
    elsewhere.mkdir()
    Ownership.claim(elsewhere, "bundle")
    dead_temporary(elsewhere, "model.onnx").write_bytes(b"x")
    (tree / "link").symlink_to(elsewhere)
    before = tree_digest(tree, elsewhere)
    listed = cli(["clean", "--dry-run", tree]).output
    assert "would remove 0 item(s)" in listed
    for name in (".export-tmp", ".cache.tmp", ".draft.tmp", "sub/.export-tmp", "looks-owned/.edgetl-owner.json"):
        assert "not edgetl's, left alone: {} (".format(tree / name) in listed, name
    assert (
        "not edgetl's, left alone: {} (in a folder edgetl does not own)".format(next(tree.glob(".notes.txt.*@*.tmp")))
        in listed
    )
    assert tree_digest(tree, elsewhere) == before
    for args in (["clean", tree], ["clean", tree.parent], ["clean", tree / "sub", "--older-than", "0s"]):
        assert "removed 0 item(s)" in succeeds(args).output
        assert tree_digest(tree, elsewhere) == before, args


def test_clean_changes_no_byte_of_a_users_files_in_an_owned_folder(source_bundle: Path, tmp_path: Path) -> None:
    bundle = copy_tree(source_bundle, tmp_path / "bundle")
    assert Ownership.read(bundle) is not None
    hour_ago = time.time() - 7200
    for name in (".draft.tmp", ".model.onnx.old.tmp", "model_v0.onnx"):
        (bundle / name).write_bytes(b"the user's " + name.encode())
        os.utime(str(bundle / name), (hour_ago, hour_ago))
    edgetl_like_names(bundle / "notes")  # a folder the manifest does not list: the user's
    before = tree_digest(bundle)
    listed = cli(["clean", "--dry-run", bundle]).output
    assert "would remove 0 item(s)" in listed
    for name in (".draft.tmp", ".model.onnx.old.tmp", "notes/.export-tmp", "notes/sub/.cache.tmp"):
        assert "not edgetl's, left alone: {} (".format(bundle / name) in listed, name
    assert (
        "left alone: {} (in a folder edgetl does not own)".format(next((bundle / "notes").glob(".notes.txt.*@*.tmp")))
        in listed
    )
    assert "removed 0 item(s)" in succeeds(["clean", bundle, "--older-than", "0s"]).output
    assert tree_digest(bundle) == before


def test_clean_changes_no_byte_of_a_users_tree_that_edgetl_home_points_at(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = tmp_path / "me"
    edgetl_like_names(tree)
    edgetl_like_names(tree / "projects")
    for folder in ("decoded", "train-features", "hashes"):  # the cache folders' names, holding the user's files
        (tree / folder).mkdir()
    (tree / "decoded" / "photos.json").write_text(json.dumps({"root": str(tmp_path / "gone"), "key": "0" * 64}))
    (tree / "decoded" / "photos.npy").write_bytes(b"\0" * 128)
    (tree / "decoded" / ".notes.tmp").write_text("the user's")
    (tree / "train-features" / "resnet-head.pt").write_bytes(b"\0" * 64)
    (tree / "hashes" / "list.json").write_text("[1, 2]")
    (tree / "hashes" / ("0" * 24 + ".json")).write_text(json.dumps({"path": "/gone", "stamp": [1], "sha256": "0"}))
    monkeypatch.setenv("EDGETL_HOME", str(tree))
    before = tree_digest(tree)
    listed = cli(["clean", "--dry-run", "--older-than", "0s"]).output
    assert "would remove 0 item(s)" in listed
    for name in ("decoded/photos.json", "train-features/resnet-head.pt", "hashes/list.json", "decoded/.notes.tmp"):
        assert "not edgetl's, left alone: {} (".format(tree / name) in listed, name
    assert ".draft.tmp" not in listed  # outside the cache folders, $EDGETL_HOME is not searched
    for args in (["clean"], ["clean", "--older-than", "0s"]):
        assert "removed 0 item(s)" in succeeds(args).output
        assert tree_digest(tree) == before, args
