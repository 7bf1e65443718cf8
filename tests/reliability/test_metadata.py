"""Issue 12, class 5: hand-edited or partial metadata (bundle.json, split.json, preprocess.json, labels.txt, a
run without split.json) fails on load, checked against one schema mechanism (edgetl.contracts.schema), with one line
naming the file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import pytest
from reliability import inputs_corpus
from reliability.inputs_corpus import assert_refused, copy_tree, run_cli

from edgetl.contracts.schema import fixed, is_int, is_str, list_of, record, validate
from edgetl.errors import CheckpointError

quick_run = inputs_corpus.quick_run  # the corpus's shared fixtures
quick_bundle = inputs_corpus.quick_bundle


def _edit_json(path: Path, change: Callable[[Any], Any]) -> None:
    path.write_text(json.dumps(change(json.loads(path.read_text()))))


def _without(key: str) -> Callable[[Any], Any]:
    return lambda data: {k: v for k, v in data.items() if k != key}


def _set(key: str, value: Any) -> Callable[[Any], Any]:
    return lambda data: dict(data, **{key: value})


SPLIT_CASES = {
    "garbage": ("{not json", "split.json is not valid JSON"),
    "a list": ([], "split.json is malformed: must be an object, got []"),
    "no val": (_without("val"), "split.json is malformed: lacks 'val'"),
    "classes not a list": (_set("classes", "alpha"), 'split.json is malformed: ["classes"] must be a list'),
    "a sample not a pair": (_set("val", [["a.png"]]), 'split.json is malformed: ["val"][0] must be a list of 2'),
    "a label not a number": (_set("val", [["a.png", "1"]]), '["val"][0][1] must be an integer, got "1"'),
    "a label out of range": (_set("val", [["a.png", 7]]), "split.json is malformed: val label 7 is not one of the 2"),
}


@pytest.mark.parametrize("edit, message", list(SPLIT_CASES.values()), ids=list(SPLIT_CASES))
def test_a_damaged_split_json_is_one_line(quick_run: Path, tmp_path: Path, edit, message: str) -> None:
    run = copy_tree(quick_run, tmp_path / "run")
    split = run / "split.json"
    if isinstance(edit, str):
        split.write_text(edit)
    elif callable(edit):
        _edit_json(split, edit)
    else:
        split.write_text(json.dumps(edit))
    assert_refused(["evaluate", run, "--device", "cpu"], message, [run])


@pytest.mark.parametrize("command", [["evaluate"], ["finetune", "--resume", "--out"], ["export"]])
def test_a_run_without_split_json_is_one_line(quick_run: Path, tmp_path: Path, command) -> None:
    run = copy_tree(quick_run, tmp_path / "run", skip=["split.json"])
    message = "is not a run folder with best.pt and split.json" if command == ["export"] else "split.json is missing"
    assert_refused([*command, run], message, [run])


BUNDLE_CASES = {
    "a list": ("bundle.json", [], "bundle.json is malformed: must be an object, got []"),
    "garbage": ("bundle.json", "]]", "bundle.json is not valid JSON"),
    "another format": ("bundle.json", _set("format", "x"), 'bundle.json is malformed: ["format"] must be one of'),
    "no models": ("bundle.json", _without("models"), "bundle.json is malformed: lacks 'models'"),
    "a model without sha256": (
        "bundle.json",
        lambda d: dict(d, models={"fp32": {k: v for k, v in d["models"]["fp32"].items() if k != "sha256"}}),
        'bundle.json is malformed: ["models"]["fp32"] lacks \'sha256\'',
    ),
    "empty preprocess": ("preprocess.json", {}, "preprocess.json is malformed: lacks 'input_size', 'resize_size'"),
    "two means": ("preprocess.json", _set("mean", [0.5, 0.5]), '["mean"] must have 3 items, got 2'),
    "a bad size": ("preprocess.json", _set("input_size", 999), "preprocess.json is malformed: need 0 < input_size"),
    "empty labels": ("labels.txt", "\n\n", "labels.txt is malformed: 0 class name(s)"),
}


@pytest.mark.parametrize("name, edit, message", list(BUNDLE_CASES.values()), ids=list(BUNDLE_CASES))
def test_a_damaged_bundle_is_one_line(quick_bundle: Path, make_image_folder, tmp_path: Path, name, edit, message):
    bundle = copy_tree(quick_bundle, tmp_path / "bundle")
    image = next(make_image_folder(counts={"a": 1, "b": 1}, size=32).rglob("*.jpg"))
    path = bundle / name
    if isinstance(edit, str):
        path.write_text(edit)
    elif callable(edit):
        _edit_json(path, edit)
    else:
        path.write_text(json.dumps(edit))
    assert_refused(["predict", bundle, image, "--backend", "onnx"], message, [bundle, image.parent])


def test_keys_a_newer_edgetl_adds_are_not_an_error(quick_bundle: Path, make_image_folder, tmp_path: Path) -> None:
    bundle = copy_tree(quick_bundle, tmp_path / "bundle")
    _edit_json(bundle / "bundle.json", lambda d: dict(d, newer=1, models={"fp32": dict(d["models"]["fp32"], newer=2)}))
    image = next(make_image_folder(counts={"a": 1, "b": 1}, size=32).rglob("*.jpg"))
    result = run_cli(["predict", bundle, image, "--backend", "onnx"])
    assert result.exit_code == 0, result.output


def test_schema_messages_name_the_file_and_the_key() -> None:
    schema = record({"rows": list_of(fixed(is_str, is_int))}, {"note": is_str})
    assert validate({"rows": [["a", 1]], "extra": True}, schema, Path("f.json")) == {"rows": [["a", 1]], "extra": True}
    with pytest.raises(
        CheckpointError, match=r'^f.json is malformed: \["rows"\]\[1\]\[1\] must be an integer, got true$'
    ):
        validate({"rows": [["a", 1], ["b", True]]}, schema, Path("f.json"))
    with pytest.raises(CheckpointError, match=r'\["note"\] must be a string, got 3'):
        validate({"rows": [], "note": 3}, schema, Path("f.json"))


def test_a_baseline_row_without_its_ratio_is_one_line_before_the_timing(tmp_path: Path) -> None:
    baseline = tmp_path / "baseline.json"
    baseline.write_text(json.dumps({"rows": [{"model": "m.onnx", "backend": "onnx", "batch": 1}]}))
    message = "baseline.json is malformed: [\"rows\"][0] lacks 'relative'"
    assert_refused(["bench", "latency", tmp_path / "m.onnx", "--baseline", baseline], message, [tmp_path])


@pytest.mark.parametrize(
    "content, message",
    [
        ({"format": "edgetl-calibration-v1", "images": []}, '["images"] must have at least 1 item(s), got 0'),
        ({"format": "edgetl-calibration-v1", "images": [{"path": "a.png"}]}, "[\"images\"][0] lacks 'sha256', 'label'"),
        ({"images": []}, "manifest.json is malformed: lacks 'format'"),
    ],
)
def test_a_damaged_calibration_manifest_is_one_line(tmp_path: Path, content, message: str) -> None:
    from edgetl.errors import DataError
    from edgetl.export.quantize import read_calibration_manifest

    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(content))
    with pytest.raises(DataError) as raised:
        read_calibration_manifest(path)
    assert message in str(raised.value) and str(path) in str(raised.value)
