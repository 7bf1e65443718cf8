"""edgetl export: ONNX structure, metadata, the parity gate (passing and failing), bundle files."""

import importlib.util
import json
import os
from dataclasses import replace

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from edgetl.cli import main
from edgetl.contracts.bundle import Bundle
from edgetl.contracts.formats import GEOMETRIES
from edgetl.contracts.geometry import imagenet_normalize
from edgetl.contracts.preprocess import PreprocessSpec
from edgetl.core.fileio import sha256_file
from edgetl.core.ownership import Ownership
from edgetl.data.folders import DatasetSplit
from edgetl.errors import ConfigError, GateError
from edgetl.export.job import ExportConfig, export_run
from edgetl.export.parity import load_eval_images, normalized, onnx_outputs, top1
from edgetl.export.targets.deepstream import nvinfer_input


def _export(run, out, **options):
    return export_run(ExportConfig(run=str(run), out=str(out), calib_dir=str(out / "calibration"), **options))


TARGETS = ("jetson-inference", "deepstream", "triton")


@pytest.fixture(scope="module")
def demo_bundle(demo_mobilenet_v2_run, tmp_path_factory):
    """The real MobileNetV2 run exported with the baked-preprocessing variant and for every --for target."""
    out = tmp_path_factory.mktemp("demo_bundle")
    report = _export(demo_mobilenet_v2_run, out, bake_preprocess=True, targets=TARGETS)
    return out, report


def test_real_export_passes_the_parity_gate_on_all_val_images(demo_bundle):
    out, report = demo_bundle
    assert report["status"] == "passed" and report["failures"] == []
    fp32, baked = report["artifacts"]
    for entry in (fp32, baked):
        parity = entry["parity"]
        assert entry["status"] == "passed"
        assert parity["real_inputs"] == 200 and parity["random_inputs"] == 8  # all 4 x 50 val images
        assert parity["max_abs_diff"] <= 1e-3 and parity["top1_agreement"] == 1.0 and parity["min_cosine"] > 0.9999
    assert json.loads((out / "export_report.json").read_text())["status"] == "passed"


def test_predict_reproduces_the_reported_top1_of_every_deployment_geometry(demo_bundle, demo_mobilenet_v2_run):
    """The report's per-geometry val top-1 (export: ONNX Runtime on crops laid out by edgetl.contracts.geometry) is
    what edgetl's runtime predicts with preprocess.json set to that geometry, on the same 200 val images."""
    from edgetl.data.folders import DatasetSplit
    from edgetl.runtime.classifier import Classifier

    out, report = demo_bundle
    split = DatasetSplit.load(demo_mobilenet_v2_run)
    bundle = Bundle.load(out)
    section = report["geometry"]
    assert section["training_geometry"] == "center-crop" and list(section["geometries"]) == list(GEOMETRIES)
    for name, row in section["geometries"].items():
        device = Bundle(bundle.root, bundle.manifest, bundle.labels, replace(bundle.preprocess, geometry=name))
        with Classifier(device, backend="onnx", topk=1, batch_size=32) as classifier:
            predicted = [p.labels[0] for _, p in classifier.classify_paths([s.path for s in split.val])]
        top1 = np.mean([label == split.classes[s.label] for label, s in zip(predicted, split.val)])
        assert row["images"] == len(split.val) == 200 and top1 == row["val_top1"], name
    assert section["geometries"]["center-crop"]["val_top1"] == report["artifacts"][0]["val_top1"]


def test_onnx_is_checked_with_dynamic_batch_metadata_and_target_ir(demo_bundle, demo_mobilenet_v2_run):
    out, _ = demo_bundle
    model = onnx.load(str(out / "model.onnx"))
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version == 8 and model.opset_import[0].version == 17  # JetPack 6 default (TensorRT 10.3)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 224, 224]
    assert model.graph.input[0].name == "input" and model.graph.output[0].name == "logits"
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props["class_names"]) == ["checkers", "dots", "rings", "stripes"]
    assert props["arch"] == "mobilenet_v2" and props["strategy"] == "feature-extractor"
    assert props["input_size"] == "224" and json.loads(props["std"]) == pytest.approx([0.229, 0.224, 0.225])
    assert props["source_checkpoint_sha256"] == sha256_file(demo_mobilenet_v2_run / "best.pt")
    assert props["edgetl_version"]


def test_baked_variant_takes_uint8_nhwc_pixels(demo_bundle):
    out, _ = demo_bundle
    graph = onnx.load(str(out / "model_baked.onnx")).graph
    tensor_type = graph.input[0].type.tensor_type
    assert tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [d.dim_value for d in tensor_type.shape.dim[1:]] == [224, 224, 3]


def test_bundle_files_and_manifest(demo_bundle):
    out, _ = demo_bundle
    bundle = Bundle.load(out)
    assert bundle.labels == ["checkers", "dots", "rings", "stripes"]
    assert bundle.preprocess == PreprocessSpec.load(out / "preprocess.json")
    assert bundle.model("fp32").sha256 == sha256_file(out / "model.onnx")
    assert bundle.model("baked").input_layout == "NHWC" and bundle.model("int8") is None
    script = out / "build_engine.sh"
    assert os.access(str(script), os.X_OK) and "--onnx=model.onnx" in script.read_text()
    assert list(bundle.manifest["engines"]) == ["model_fp32.engine"]


def test_broken_baked_normalisation_fails_and_leaves_no_valid_artifact(demo_mobilenet_v2_run, tmp_path, monkeypatch):
    import edgetl.export.job as export_module

    real_baked_module = export_module.baked_module

    def wrong_std(model, spec, softmax):  # a deliberately wrong graph: std 1 instead of the ImageNet std
        return real_baked_module(
            model, PreprocessSpec(spec.input_size, spec.resize_size, spec.mean, (1.0, 1.0, 1.0)), softmax
        )

    monkeypatch.setattr(export_module, "baked_module", wrong_std)
    owner = Ownership.claim(tmp_path, "bundle", str(demo_mobilenet_v2_run.resolve()))
    (tmp_path / "model_baked.onnx").write_bytes(b"stale file from an earlier export")
    owner.record(["model_baked.onnx"])  # an earlier export of this run wrote it
    with pytest.raises(GateError, match="model_baked.onnx"):
        _export(demo_mobilenet_v2_run, tmp_path, bake_preprocess=True, val_images=16)
    assert not (tmp_path / "model_baked.onnx").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".model")]  # no temporary file left
    report = json.loads((tmp_path / "export_report.json").read_text())
    assert report["status"] == "failed"
    baked = report["artifacts"][1]
    assert baked["status"] == "failed" and baked["parity"]["max_abs_diff"] > 1e-3
    assert baked["parity"]["real_inputs"] == 16
    assert Bundle.load(tmp_path).model("baked") is None  # the good fp32 model stays listed, the bad one is not


def test_broken_fp32_export_leaves_no_bundle(tiny_run, tmp_path, monkeypatch):
    import edgetl.export.job as export_module

    real_export = export_module.export_onnx

    def export_then_corrupt(module, path, *args):  # shift the classifier bias inside the written file
        real_export(module, path, *args)
        model = onnx.load(str(path))
        bias = next(t for t in model.graph.initializer if t.name.endswith("head.bias"))
        bias.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(bias) + 0.5, bias.name))
        onnx.save(model, str(path))

    monkeypatch.setattr(export_module, "export_onnx", export_then_corrupt)
    result = CliRunner().invoke(main, ["export", str(tiny_run), "--out", str(tmp_path)])
    assert result.exit_code == 3  # a failed gate
    assert "max |difference|" in result.output and "FAILED model.onnx" in result.output
    assert not (tmp_path / "model.onnx").exists() and not (tmp_path / "bundle.json").exists()
    assert json.loads((tmp_path / "export_report.json").read_text())["status"] == "failed"


def test_for_jetson_inference_names_softmax_static_batch_1_and_older_target(tiny_run, tmp_path):
    report = _export(tiny_run, tmp_path, targets=("jetson-inference",), trt_version="8.5", batch=2)
    model = onnx.load(str(tmp_path / "jetson-inference" / "model.onnx"))
    assert model.ir_version == 8
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 224, 224]
    assert (model.graph.input[0].name, model.graph.output[0].name) == ("input_0", "output_0")
    assert model.graph.node[-1].op_type == "Softmax"  # jetson-inference thresholds raw outputs as confidences
    assert report["targets"]["jetson-inference"]["status"] == "passed"
    geometry = report["geometry"]
    assert geometry["training_geometry"] == "center-crop" and list(geometry["geometries"]) == list(GEOMETRIES)
    assert all(row["images"] == 12 for row in geometry["geometries"].values())
    script = (tmp_path / "build_engine.sh").read_text()  # the bundle's own batch (--batch 2) is unchanged
    assert "--saveEngine=model_fp32.engine" in script and "Shapes" not in script
    assert [d.dim_value for d in onnx.load(str(tmp_path / "model.onnx")).graph.input[0].type.tensor_type.shape.dim][
        0
    ] == 2


def test_fp16_for_tensorrt_11_writes_an_fp16_onnx(tiny_run, tmp_path):
    report = _export(tiny_run, tmp_path, precision="fp16", trt_version="11.x")
    assert [a["file"] for a in report["artifacts"]] == ["model.onnx", "model_fp16.onnx"]
    initializers = onnx.load(str(tmp_path / "model_fp16.onnx")).graph.initializer
    assert {t.data_type for t in initializers if t.data_type in (1, 10)} == {onnx.TensorProto.FLOAT16}
    script = (tmp_path / "build_engine.sh").read_text()
    assert "--onnx=model_fp16.onnx" in script and "--fp16" not in script


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_trt_without_tensorrt_fails_after_writing_onnx_and_script(tiny_run, tmp_path):
    result = CliRunner().invoke(main, ["export", str(tiny_run), "--out", str(tmp_path), "--trt", "--fp16"])
    assert result.exit_code == 1
    assert "tensorrt" in result.output and "build_engine.sh" in result.output
    assert (tmp_path / "model.onnx").is_file() and (tmp_path / "bundle.json").is_file()
    assert "--fp16" in (tmp_path / "build_engine.sh").read_text()
    assert json.loads((tmp_path / "export_report.json").read_text())["engine"]["status"] == "not built"


@pytest.mark.parametrize(
    "options, message",
    [
        ({"precision": "int4"}, "precision must be one of fp32, fp16, int8"),
        ({"trt": True, "precision": "int8", "int8_form": "cpu"}, "TensorRT rejects"),
        ({"calib_data": "x"}, "calib_data only applies with precision int8"),
        ({"opset": 18, "trt_version": "8.6"}, "opset <= 17"),
        ({"opset": 12}, "^opset must be between 13"),
        ({"batch": 2, "max_batch": 8}, "static"),
        ({"min_batch": 4, "opt_batch": 2}, "min-batch"),
        ({"targets": ("caffe",)}, "^targets must be one of bundle, jetson-inference"),
    ],
)
def test_export_config_rejects_conflicts(options, message):
    with pytest.raises(ConfigError, match=message):
        ExportConfig(run="models/x", **options)


def test_export_config_defaults():
    config = ExportConfig(run="models/x")
    assert config.int8_form is None and config.resolved().int8_form is None  # fp32: the INT8 options do not apply
    assert ExportConfig(run="x", precision="int8").resolved().int8_form == "cpu"
    assert ExportConfig(run="x", precision="int8", trt=True).resolved().int8_form == "trt"
    assert config.batch is None and config.targets == ("bundle",) and config.dla_core is None
    assert config.profile().max == 8 and config.precision == "fp32"


def test_export_of_a_folder_that_is_not_a_run_is_one_line(tmp_path):
    result = CliRunner().invoke(main, ["export", str(tmp_path)])
    assert result.exit_code == 1 and "is not a run folder" in result.output


def test_export_cli_batch_conflict_is_one_line(tiny_run):
    result = CliRunner().invoke(main, ["export", str(tiny_run), "--batch", "1", "--dynamic-batch"])
    assert result.exit_code == 1 and "Error: --batch and --dynamic-batch" in result.stderr
    assert "--dynamic-batch has no effect and will be removed" in result.stderr


def test_every_target_on_the_demo_run_reproduces_its_reported_top1(demo_bundle, demo_mobilenet_v2_run):
    """The real pretrained MobileNetV2 run: each target's ONNX, run by ONNX Runtime on the demo val set laid out as
    its device does, gives the top-1 its folder reports, and nvinfer's scalar std costs at most a few val images."""
    tmp_path, report = demo_bundle
    spec = PreprocessSpec.load(demo_mobilenet_v2_run / "preprocess.json")
    samples = DatasetSplit.load(demo_mobilenet_v2_run).val
    jetson, deepstream, triton = (report["targets"][t] for t in TARGETS)
    print("demo run targets:", {k: deepstream[k] for k in deepstream if k.endswith("top1")}, jetson["device_val_top1"])

    def measured(path, batch, prepare, geometry=spec.geometry):
        images = load_eval_images(samples, replace(spec, geometry=geometry), 500, 0)
        return top1(onnx_outputs(path, images.crops, batch, prepare=prepare), images.labels)

    def norm(crops):
        return normalized(crops, spec)

    jetson_model = tmp_path / "jetson-inference" / "model.onnx"
    assert measured(jetson_model, 1, imagenet_normalize, jetson["geometry"]) == jetson["device_val_top1"]
    scaled = nvinfer_input(deepstream["net_scale_factor"], deepstream["offsets"])
    approximate = measured(tmp_path / "deepstream" / "model.onnx", None, scaled, deepstream["geometry"])
    assert approximate == deepstream["nvinfer_scalar_std_top1"]
    assert deepstream["val_images"] == 200
    assert deepstream["exact_pixels_model_top1"] - deepstream["nvinfer_scalar_std_top1"] <= 3 / 200
    model = tmp_path / "triton" / demo_mobilenet_v2_run.resolve().name / "1" / "model.onnx"
    assert measured(model, None, norm) == triton["models"][0]["val_top1"]
