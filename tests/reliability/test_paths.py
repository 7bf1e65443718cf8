"""Issue 12, class 4: an output path under or equal to a regular file is a one-line error on parsing (every
command with --out/--json-out), and split.json holds absolute paths, so a run works from any directory
(old runs with relative paths still load when their dataset can be found)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from reliability import inputs_corpus
from reliability.inputs_corpus import assert_refused, copy_tree, run_cli

from edgetl.data.folders import DatasetSplit, load_dataset

quick_run = inputs_corpus.quick_run  # the corpus's shared fixture


@pytest.fixture
def a_file(tmp_path: Path) -> Path:
    path = tmp_path / "notes.txt"
    path.write_text("a regular file\n")
    return path


# (command before --out, the option, whether the output is a folder)
COMMANDS = [
    (["finetune", "data"], "--out", True),
    (["export", "run"], "--out", True),
    (["bench", "latency", "model.onnx"], "--json-out", False),
    (["bench", "variants", "data"], "--out", True),
    (["doctor", "--gpu-selfcheck"], "--out", True),
    (["inspect", "."], "--out", True),
    (["embed", ".", "."], "--out", False),
]


@pytest.mark.parametrize("command, option, folder", COMMANDS, ids=[" ".join(c[0][:2]) for c in COMMANDS])
def test_an_output_under_a_regular_file_is_one_line(a_file: Path, tmp_path: Path, monkeypatch, command, option, folder):
    monkeypatch.chdir(tmp_path)
    target = a_file / "sub" / ("out" if folder else "out.json")
    assert_refused([*command, option, target], "{}: {} is a file, not a folder".format(target, a_file), [tmp_path])


@pytest.mark.parametrize("command, option, folder", [c for c in COMMANDS if c[2]], ids=lambda v: str(v))
def test_a_folder_output_that_is_a_regular_file_is_one_line(
    a_file: Path, tmp_path: Path, monkeypatch, command, option, folder
):
    monkeypatch.chdir(tmp_path)
    assert_refused([*command, option, a_file], "{} {} is a file, not a folder".format(option, a_file), [tmp_path])


def test_a_file_output_that_is_a_folder_is_one_line(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert_refused(["bench", "latency", "m.onnx", "--json-out", tmp_path], "is a folder; give a file name", [tmp_path])


def test_split_json_records_absolute_paths(make_image_folder, tmp_path: Path, monkeypatch) -> None:
    make_image_folder(counts={"a": 3, "b": 3}, name="data")
    monkeypatch.chdir(tmp_path)
    split = load_dataset(Path("data"), 0.34)
    split.save(tmp_path)
    saved = json.loads((tmp_path / "split.json").read_text())
    assert Path(saved["root"]) == tmp_path / "data"
    assert all(Path(p).is_absolute() and Path(p).is_file() for p, _ in saved["train"] + saved["val"])


def test_an_old_run_with_relative_paths_evaluates_from_another_directory(quick_run: Path, tmp_path: Path, monkeypatch):
    """Runs made before the fix stored paths relative to where training ran (the project folder)."""
    project = tmp_path / "project"
    copy_tree(quick_run.parent / "data", project / "data")
    run = copy_tree(quick_run, project / "models" / "run")
    data = json.loads((run / "split.json").read_text())
    old = str(quick_run.parent)

    def relative(path: str) -> str:
        return str(Path(path).relative_to(old))

    data["root"] = relative(data["root"])
    for part in ("train", "val"):
        data[part] = [[relative(p), label] for p, label in data[part]]
    (run / "split.json").write_text(json.dumps(data))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    split = DatasetSplit.load(Path("../project/models/run"))
    assert split.root == project / "data" and all(s.path.is_file() for s in split.train + split.val)
    result = run_cli(["evaluate", "../project/models/run", "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output[result.output.index("{") :])["count"] == len(split.val)
