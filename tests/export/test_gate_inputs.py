"""The INT8 gate's inputs beyond the val images: seeded augmented views when the sample is too small for a
verdict, ``--gate-data``, and the report's record of which inputs were judged."""

import json
import shutil

import numpy as np
import pytest

from edgetl.contracts.preprocess import PreprocessSpec
from edgetl.data.folders import image_files
from edgetl.errors import ConfigError
from edgetl.export.config import ExportConfig
from edgetl.export.gate import images_needed, judge
from edgetl.export.gate_inputs import (
    MAX_VIEWS_PER_IMAGE,
    VIEW_TARGET,
    assemble_gate_inputs,
    augmented_views,
    empty_images,
    gate_data_images,
)

SPEC = PreprocessSpec(input_size=32, resize_size=36)


@pytest.fixture
def folder(make_image_folder):
    return make_image_folder(counts={"a": 6, "b": 6}, size=40)


def test_views_are_seeded_and_reproducible(folder):
    sources = image_files(folder)
    first = augmented_views(sources, SPEC, 30, seed=0)
    assert first.shape == (30, 32, 32, 3) and first.dtype == np.uint8
    np.testing.assert_array_equal(first, augmented_views(sources, SPEC, 30, seed=0))
    assert not np.array_equal(first, augmented_views(sources, SPEC, 30, seed=1))
    assert len({view.tobytes() for view in first}) == 30  # crops of one image differ from each other
    assert augmented_views(sources, SPEC, 0, seed=0).shape == (0, 32, 32, 3)


def test_views_top_up_only_a_sample_too_small_for_a_verdict(folder):
    sources = image_files(folder)
    val = gate_data_images(folder, SPEC, 1000, 0)
    small = assemble_gate_inputs(
        val_count=12, heldout=empty_images(SPEC), gate_data=empty_images(SPEC), view_sources=sources, spec=SPEC,
        max_points=20.0, seed=0,
    )  # fmt: skip
    needed = images_needed(0.2)  # 14 images for a 20-point bound
    assert small.parts == {"val": 12, "heldout_train": 0, "gate_data": 0, "augmented_views": VIEW_TARGET * needed - 12}
    assert small.record["images"] == VIEW_TARGET * needed and small.record["views"]["seed"] == 0
    assert "not independent" in small.record["views"]["caveat"]
    # a model compared with itself: unresolvable on the val images alone, passed with the views
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(small.record["images"], 2))
    labels = val.labels
    assert judge(reference[:12], reference[:12], labels, 20.0, "same").verdict == "unresolvable"
    passed = judge(reference, reference.copy(), labels, 20.0, "same", small.parts)
    assert passed.verdict == "passed" and passed.heldout_train_images == 0
    capped = assemble_gate_inputs(
        val_count=12, heldout=empty_images(SPEC), gate_data=empty_images(SPEC), view_sources=sources[:2], spec=SPEC,
        max_points=1.0, seed=0,
    )  # fmt: skip
    assert capped.parts["augmented_views"] == 2 * MAX_VIEWS_PER_IMAGE
    enough = assemble_gate_inputs(
        val_count=12, heldout=val, gate_data=empty_images(SPEC), view_sources=sources, spec=SPEC, max_points=50.0,
        seed=0,
    )  # fmt: skip
    assert enough.parts["augmented_views"] == 0 and "views" not in enough.record and len(enough.crops) == len(val)


def test_gate_data_images_are_judged_and_recorded(folder, tmp_path):
    data = gate_data_images(folder, SPEC, 1000, 0)
    inputs = assemble_gate_inputs(
        val_count=4, heldout=empty_images(SPEC), gate_data=data, view_sources=[], spec=SPEC, max_points=50.0,
        seed=0, gate_data_dir=str(folder),
    )  # fmt: skip
    assert inputs.parts == {"val": 4, "heldout_train": 0, "gate_data": 12, "augmented_views": 0}
    assert inputs.record["gate_data_dir"] == str(folder) and len(inputs.crops) == 12
    reference = np.eye(2)[np.arange(16) % 2]
    candidate = reference.copy()
    candidate[5] = candidate[5][::-1]
    (line,) = judge(reference, candidate, np.zeros(4, np.int64), 1.0, "test", inputs.parts).failures()
    assert "16 inputs (4 val + 12 gate data)" in line


@pytest.mark.parametrize(
    "options, message",
    [({"gate_data": "nowhere"}, "gate_data is not a folder: nowhere"),
     ({"gate_data": ".", "precision": "fp32"}, "gate_data only applies with precision int8")],
)  # fmt: skip
def test_gate_data_option_is_validated(options, message):
    with pytest.raises(ConfigError, match=message):
        ExportConfig(**dict(dict(run="r", precision="int8"), **options))


def test_empty_gate_data_folder_is_a_one_line_error(tmp_path):
    from edgetl.errors import DataError

    with pytest.raises(DataError, match="--gate-data: no images under"):
        gate_data_images(tmp_path, SPEC, 10, 0)


def test_a_tiny_run_with_a_faithful_int8_model_gets_a_verdict(tiny_run, tmp_path):
    """12 val images and no held-out training image (calibration takes all 24): too few for a 20-point bound
    without the views, passed with them; the report records the inputs, and the ladder never ran."""
    from edgetl.export.job import export_run

    out = tmp_path / "bundle"
    config = ExportConfig(
        run=str(tiny_run), out=str(out), precision="int8", int8_form="cpu", max_int8_drop=20.0,
        calib_dir=str(tmp_path / "calibration"),
    )  # fmt: skip
    report = export_run(config)
    (int8,) = [a for a in report["artifacts"] if a["kind"] == "int8"]
    gate = int8["accuracy_gate"]
    assert gate["verdict"] == "passed" and gate["val_images"] == 12 and gate["heldout_train_images"] == 0
    assert gate["inputs"]["augmented_views"] == gate["images"] - 12 > 0
    assert int8["gate_inputs"]["views"]["seed"] == 0
    assert int8["recovery"]["status"] == "not needed" and "attempts" not in int8["recovery"]
    saved = json.loads((out / "export_report.json").read_text())
    assert "recovery" not in saved["config"] and saved["config"]["int8_recover"] == "auto"
    shutil.rmtree(out)
