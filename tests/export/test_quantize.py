"""INT8: calibration sampling and manifests, the lazy reader, Q/DQ forms, the accuracy gate."""

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgetl.contracts.bundle import Bundle
from edgetl.contracts.preprocess import PreprocessSpec
from edgetl.data.folders import Sample
from edgetl.data.sampling import select_balanced
from edgetl.errors import DataError
from edgetl.export.job import ExportConfig, calibration_manifest_path, export_run
from edgetl.export.quantize import (
    ImageCalibrationReader,
    calibration_samples,
    read_calibration_manifest,
    write_calibration_manifest,
)


def _samples(counts):
    return [Sample(Path("c{}/{:03d}.jpg".format(label, i)), label) for label, n in enumerate(counts) for i in range(n)]


def test_select_balanced_is_class_balanced_and_seeded():
    pool = _samples([50, 10, 30])
    chosen = select_balanced(pool, 24, seed=0)
    assert [sum(s.label == k for s in chosen) for k in range(3)] == [8, 8, 8]
    assert chosen == select_balanced(list(reversed(pool)), 24, seed=0)  # order of the pool does not matter
    assert chosen != select_balanced(pool, 24, seed=1)
    # a small class gives all it has, the others fill the rest
    counts = [sum(s.label == k for s in select_balanced(pool, 60, seed=0)) for k in range(3)]
    assert counts == [25, 10, 25]
    assert len(select_balanced(pool, 1000, seed=0)) == 90


def test_missing_calibration_data_is_a_hard_error(tmp_path, tiny_run):
    with pytest.raises(DataError, match="no split.json"):
        calibration_samples(tmp_path, None, 10, 0)
    with pytest.raises(DataError, match="not found"):
        calibration_samples(tiny_run, str(tmp_path / "nowhere"), 10, 0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no calibration images"):
        calibration_samples(tiny_run, str(tmp_path / "empty"), 10, 0)


def test_calibration_from_class_folders_and_manifest_round_trip(make_image_folder, tmp_path):
    root = make_image_folder(counts={"a": 5, "b": 3})
    samples, source = calibration_samples(tmp_path, str(root), 6, seed=0)
    assert source == str(root) and [s.label for s in samples] == [0, 1, 0, 1, 0, 1]
    manifest = tmp_path / "calibration" / "run" / "manifest.json"
    write_calibration_manifest(manifest, samples, {"seed": 0})
    data = json.loads(manifest.read_text())
    assert len(data["images"]) == 6 and all(len(e["sha256"]) == 64 for e in data["images"])
    again, _ = calibration_samples(tmp_path, str(manifest), 999, seed=5)  # a manifest fixes the sample
    assert again == samples
    samples[0].path.write_bytes(samples[0].path.read_bytes() + b"\0")
    with pytest.raises(DataError, match="changed since"):
        read_calibration_manifest(manifest)


def test_calibration_reader_is_lazy_and_supports_ranges(make_image_folder, tmp_path):
    missing = [Sample(tmp_path / "gone_{}.jpg".format(i), 0) for i in range(4)]
    reader = ImageCalibrationReader(missing, PreprocessSpec(input_size=32, resize_size=36), "input")
    assert len(reader) == 4  # nothing decoded yet: the files do not even exist
    with pytest.raises(DataError):
        reader.get_next()
    root = make_image_folder(counts={"a": 3, "b": 2}, size=40)
    real = [Sample(p, 0) for p in sorted(root.rglob("*.jpg"))]
    reader = ImageCalibrationReader(real, PreprocessSpec(input_size=32, resize_size=36), "input", batch=2)
    assert len(reader) == 2
    reader.set_range(1, 2)
    batch = reader.get_next()
    assert batch["input"].shape == (2, 3, 32, 32) and batch["input"].dtype == np.float32
    assert reader.get_next() is None


def _qdq_zero_points(model):
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    return [inits[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear"]


def test_trt_form_is_symmetric_signed_with_float_bias(tiny_run, tmp_path):
    # the form, not accuracy: 24 images of a random-init model cannot resolve a 1-point gate
    report = export_run(
        ExportConfig(
            run=str(tiny_run),
            out=str(tmp_path),
            precision="int8",
            int8_form="trt",
            calib_size=12,
            max_int8_drop=100.0,
            calib_dir=str(tmp_path / "calibration"),
        )
    )
    model = onnx.load(str(tmp_path / "model_int8.onnx"))
    zero_points = _qdq_zero_points(model)
    assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points)
    inits = {t.name: t for t in model.graph.initializer}
    dequantized = [
        inits[n.input[0]] for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
    ]
    assert dequantized and all(t.data_type == onnx.TensorProto.INT8 for t in dequantized)  # no int32 bias
    assert model.ir_version == 8 and model.opset_import[0].version == 17
    assert Bundle.load(tmp_path).model("int8").int8_form == "trt"
    assert "--onnx=model_int8.onnx" in (tmp_path / "build_engine.sh").read_text()
    manifest = json.loads(calibration_manifest_path(tmp_path / "calibration", tiny_run).read_text())
    assert len(manifest["images"]) == 12 and manifest["int8_form"] == "trt"
    assert report["artifacts"][1]["calibration"]["images"] == 12
    gate = report["artifacts"][1]["accuracy_gate"]  # judged as float Q/DQ, not by this CPU's int8 kernels
    assert gate["simulation"].startswith("onnxruntime-float-qdq") and gate["images"] == 24  # 12 val + 12 held out


def test_int8_cpu_form_keeps_top1_within_the_gate_on_demo_data(demo_mobilenet_v2_run, tmp_path):
    report = export_run(
        ExportConfig(
            run=str(demo_mobilenet_v2_run),
            out=str(tmp_path),
            precision="int8",
            int8_form="cpu",
            calib_dir=str(tmp_path / "calibration"),
        )
    )
    entry = report["artifacts"][1]
    gate = entry["accuracy_gate"]
    assert report["status"] == "passed" and entry["status"] == "passed" and gate["verdict"] == "passed"
    assert entry["calibration"]["images"] == 256 and gate["simulation"] == "onnxruntime-cpu-kernels"
    assert (gate["images"], gate["val_images"], gate["heldout_train_images"]) == (544, 200, 344)  # 600 - 256 held out
    assert gate["upper_bound_points"] <= 1.0 and gate["max_points"] == 1.0
    assert gate["val_drop_points"] <= 1.0 and gate["fp32_val_top1"] >= 0.85
    # passes on every ISA because the export adapts: the ISA's form, then (where still needed) the fallback
    fallback = entry["fallback"]
    assert fallback["status"] in ("not needed", "passed"), fallback
    assert len(fallback.get("kept_fp32", [])) <= ExportConfig(run="r").int8_fallback_max_layers
    zero_points = _qdq_zero_points(onnx.load(str(tmp_path / "model_int8.onnx")))
    assert any(z.dtype == np.uint8 for z in zero_points)  # unsigned activations: ONNX Runtime's fast CPU form
    script = (tmp_path / "build_engine.sh").read_text()  # TensorRT cannot take this form: the script says so
    assert "# NOTE: model_int8.onnx is the CPU form" in script and "--saveEngine=model_fp32.engine" in script
