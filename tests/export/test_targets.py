"""edgetl export --for jetson-inference/deepstream/triton: each folder's files checked structurally (the nvinfer
config as key=value groups, the pbtxt with Triton's own schema, every ONNX with onnx.checker and its shapes),
ONNX Runtime reproducing each reported top-1, the refusals, and the INT8 calibration cache."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Dict

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from edgetl.cli import main
from edgetl.contracts.geometry import IMAGENET_STRETCH, imagenet_normalize
from edgetl.contracts.preprocess import PreprocessSpec
from edgetl.core.fileio import sha256_file
from edgetl.core.options import command_args
from edgetl.errors import ConfigError, DependencyError
from edgetl.export.job import ExportConfig, export_run
from edgetl.export.parity import load_eval_images, normalized, onnx_outputs, top1
from edgetl.export.targets.deepstream import GEOMETRY, engine_name, nvinfer_input
from edgetl.export.targets.triton import model_config_pb2
from edgetl.trt.calibration_cache import activation_scales, parse_cache

TARGETS = ("jetson-inference", "deepstream", "triton")


def parse_key_file(text: str) -> Dict[str, Dict[str, str]]:
    """A GLib key file (nvinfer's config format) as {group: {key: value}}; fails on any other line."""
    groups: Dict[str, Dict[str, str]] = {}
    current = None
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = groups.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None and key == key.strip() and key not in current, line
        current[key] = value
    return groups


def _onnx(path: Path) -> onnx.ModelProto:
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    return model


def _dims(value: onnx.ValueInfoProto) -> list:
    return [d.dim_value or d.dim_param for d in value.type.tensor_type.shape.dim]


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory):
    """The tiny run exported for every target with the INT8 trt form (a random-init model: the gate is
    recorded, not enforced)."""
    out = tmp_path_factory.mktemp("targets") / "bundle"
    config = ExportConfig(
        run=str(tiny_run), out=str(out), targets=TARGETS, precision="int8", calib_size=12, max_int8_drop=100.0,
        calib_dir=str(out.parent / "calibration"),
    )  # fmt: skip
    return out, export_run(config), config


@pytest.fixture(scope="module")
def val(tiny_run, exported):
    """The run's spec and its val images laid out as each geometry (the training one under None)."""
    from edgetl.data.folders import DatasetSplit

    spec = PreprocessSpec.load(tiny_run / "preprocess.json")
    samples = DatasetSplit.load(tiny_run).val
    images = {g: load_eval_images(samples, replace(spec, geometry=g), 500, 0) for g in (IMAGENET_STRETCH, GEOMETRY)}
    return spec, dict(images, training=load_eval_images(samples, spec, 500, 0))


def test_jetson_inference_folder(exported, tiny_run):
    out, report, _ = exported
    folder = out / "jetson-inference"
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "labels.txt", "model.onnx"]  # no baked, no INT8
    model = _onnx(folder / "model.onnx")
    (graph_input,), (graph_output,) = model.graph.input, model.graph.output
    assert (graph_input.name, _dims(graph_input)) == ("input_0", [1, 3, 224, 224])
    assert (graph_output.name, _dims(graph_output)) == ("output_0", [1, 3])
    assert model.graph.node[-1].op_type == "Softmax"
    labels = (folder / "labels.txt").read_text()
    assert labels.splitlines() == ["alpha", "beta", "gamma"] and labels.endswith("\n") and "\n\n" not in labels
    readme = (folder / "README.md").read_text()
    assert "--input_blob=input_0 --output_blob=output_0" in readme and "writable" in readme
    assert "edgetl export {}".format(tiny_run) in readme and "JetPack 5.1 and 6.x" in readme
    assert report["targets"]["jetson-inference"]["status"] == "passed"


def test_onnx_runtime_reproduces_every_reported_top1(exported, val):
    """Each figure, recomputed from the folder's own model on the val images laid out as its device does."""
    out, report, _ = exported
    spec, images = val
    jetson, deepstream, triton = (report["targets"][t] for t in TARGETS)

    def measured(path, geometry, prepare, batch=None):
        return top1(onnx_outputs(path, images[geometry].crops, batch, prepare=prepare), images[geometry].labels)

    def norm(crops):
        return normalized(crops, spec)

    jetson_model = out / "jetson-inference" / "model.onnx"
    assert measured(jetson_model, "training", norm, 1) == jetson["val_top1"]
    assert jetson["geometry"] == IMAGENET_STRETCH
    assert measured(jetson_model, IMAGENET_STRETCH, imagenet_normalize, 1) == jetson["device_val_top1"]
    assert deepstream["geometry"] == GEOMETRY
    assert measured(out / "deepstream" / "model.onnx", "training", norm) == deepstream["training_geometry_top1"]
    scaled = nvinfer_input(deepstream["net_scale_factor"], deepstream["offsets"])
    assert measured(out / "deepstream" / "model.onnx", GEOMETRY, scaled) == deepstream["nvinfer_scalar_std_top1"]
    pixels = out / "deepstream" / "model_pixels.onnx"
    exact = measured(pixels, GEOMETRY, lambda c: c.transpose(0, 3, 1, 2).astype(np.float32))
    assert exact == deepstream["exact_pixels_model_top1"]
    name = Path(report["run"]).resolve().name
    assert measured(out / "triton" / name / "1" / "model.onnx", "training", norm) == triton["models"][0]["val_top1"]
    assert deepstream["val_images"] == len(images[GEOMETRY]) == 12


def test_deepstream_configs_are_nvinfer_classifier_key_files(exported):
    out, report, config = exported
    folder = out / "deepstream"
    approx = parse_key_file((folder / "config_infer.txt").read_text())["property"]
    exact = parse_key_file((folder / "config_infer_exact.txt").read_text())["property"]
    figures = report["targets"]["deepstream"]
    for values, onnx_file in ((approx, "model.onnx"), (exact, "model_pixels.onnx")):
        assert values["onnx-file"] == onnx_file and (folder / onnx_file).is_file()
        assert (values["maintain-aspect-ratio"], values["symmetric-padding"]) == ("0", "0")  # figures["geometry"]
        assert values["network-type"] == "1" and values["model-color-format"] == "0"
        assert values["infer-dims"] == "3;224;224" and values["batch-size"] == "8"
        assert values["network-mode"] == "1"
        assert values["model-engine-file"] == "{}_b8_gpu0_int8.engine".format(onnx_file)
        assert 0.5 < float(values["classifier-threshold"]) < 1 and values["labelfile-path"] == "labels.txt"
        assert values["output-blob-names"] == "probabilities"
    assert float(exact["net-scale-factor"]) == 1.0 and exact["offsets"] == "0;0;0"
    assert (approx["int8-calib-file"], exact["int8-calib-file"]) == ("calibration.cache", "calibration_pixels.cache")
    spec = PreprocessSpec.load(out / "preprocess.json")
    offsets = [float(v) for v in approx["offsets"].split(";")]
    assert offsets == pytest.approx([255 * m for m in spec.mean])
    scale = float(approx["net-scale-factor"])
    assert min(1 / (255 * s) for s in spec.std) < scale < max(1 / (255 * s) for s in spec.std)
    assert scale == pytest.approx(figures["net_scale_factor"], rel=1e-8)
    assert (folder / "labels.txt").read_text() == "alpha;beta;gamma\n"
    for onnx_file, pixels in (("model.onnx", False), ("model_pixels.onnx", True)):
        model = _onnx(folder / onnx_file)
        assert _dims(model.graph.input[0])[1:] == [3, 224, 224] and _dims(model.graph.output[0])[1:] == [3]
        assert model.graph.node[-1].op_type == "Softmax" and model.graph.input[0].type.tensor_type.elem_type == 1
        assert ({p.key: p.value for p in model.metadata_props}["input_layout"] == "NCHW float32 pixels 0-255") == pixels
    assert engine_name("model.onnx", 4, "fp16", 1) == "model.onnx_b4_dla1_fp16.engine"


def _tensor_names(path: Path) -> set:
    graph = onnx.load(str(path)).graph
    return {t for n in graph.node for t in list(n.input) + list(n.output)} | {i.name for i in graph.input}


def _bits(value) -> bytes:
    return np.float32(value).tobytes()


@pytest.mark.parametrize(
    "model, cache",
    [
        ("model.onnx", "calibration.cache"),
        ("deepstream/model.onnx", "deepstream/calibration.cache"),
        ("deepstream/model_pixels.onnx", "deepstream/calibration_pixels.cache"),
    ],
)
def test_calibration_cache_round_trips_the_qdq_scales_bit_exactly(exported, model, cache):
    """Each cache holds every activation scale of the gated Q/DQ model, bit for bit, under the name the tensor
    has in the float model beside it (for the pixels model: the normalised pixels its first layer reads)."""
    out, _, _ = exported
    qdq = activation_scales(onnx.load(str(out / "model_int8.onnx")))
    version, cached = parse_cache((out / cache).read_text())
    assert version == 100300  # --trt-version 10.3, until the device sets its own
    assert len(cached) == len(qdq) > 10 and set(cached) <= _tensor_names(out / model)
    assert sorted(_bits(v) for v in cached.values()) == sorted(_bits(v) for v in qdq.values())
    pixels = model.endswith("model_pixels.onnx")
    assert ("input" in cached) != pixels  # the pixels model's input is 0-255 pixels: never quantized as "input"
    shared = set(cached) & set(qdq)
    assert len(shared) == len(qdq) - 1 - pixels  # renamed: the quantized graph output (and the pixels' input)
    for name in shared:
        assert _bits(cached[name]) == _bits(qdq[name]), name
    if pixels:
        first_conv = next(n for n in onnx.load(str(out / model)).graph.node if n.op_type == "Conv")
        assert _bits(cached[first_conv.input[0]]) == _bits(qdq["input"])


def test_deepstream_int8_stamp_script_and_manifest(exported):
    out, _, _ = exported
    script = (out / "deepstream" / "set_calibration_version.sh").read_text()
    assert "sed -i" in script and "for cache in calibration.cache calibration_pixels.cache; do" in script
    manifest = json.loads((out / "bundle.json").read_text())
    assert manifest["calibration_cache"]["tensors"] == len(parse_cache((out / "calibration.cache").read_text())[1])


def test_bundle_json_records_how_each_artifact_was_derived(exported, tiny_run):
    """One lineage: every artifact from the run's best.pt, INT8 and its scales derived from model.onnx, with
    no derived weights (the checkpoint's own were quantized)."""
    out, _, config = exported
    checkpoint = sha256_file(tiny_run / "best.pt")
    lineage = json.loads((out / "bundle.json").read_text())["lineage"]
    assert lineage["checkpoint_sha256"] == checkpoint
    artifacts = lineage["artifacts"]
    assert set(artifacts) == {"model.onnx", "model_int8.onnx", "calibration.cache", *TARGETS, "triton-trt"}
    assert {e["checkpoint_sha256"] for e in artifacts.values()} == {checkpoint}
    assert {e["derived_weights_sha256"] for e in artifacts.values()} == {None}
    int8 = artifacts["model_int8.onnx"]
    assert (int8["precision"], int8["from"], int8["step"]) == ("int8", "model.onnx", "int8 quantization (trt form)")
    assert artifacts["calibration.cache"]["from"] == "model_int8.onnx"
    assert artifacts["deepstream"] == {
        "checkpoint_sha256": checkpoint, "precision": config.precision, "from": None, "step": "--for deepstream",
        "derived_weights_sha256": None,
    }  # fmt: skip


def test_triton_repositories_are_valid_against_tritons_schema(exported):
    from google.protobuf import text_format

    out, report, _ = exported
    pb2 = model_config_pb2()
    name = Path(report["run"]).resolve().name
    repository, plans = out / "triton", out / "triton-trt"
    assert sorted(p.name for p in repository.iterdir() if p.is_dir()) == [name, name + "_int8"]
    assert sorted(p.name for p in plans.iterdir()) == [name + "_trt"]
    models = ((repository, name, "onnxruntime_onnx"), (repository, name + "_int8", "onnxruntime_onnx"))
    for root, model, platform in models + ((plans, name + "_trt", "tensorrt_plan"),):
        config = text_format.Parse((root / model / "config.pbtxt").read_text(), pb2.ModelConfig())
        assert (config.name, config.platform, config.max_batch_size) == (model, platform, 8)
        assert config.HasField("dynamic_batching")
        (model_input,), (model_output,) = config.input, config.output
        assert (model_input.name, list(model_input.dims), model_input.data_type) == ("input", [3, 224, 224], 11)
        assert (model_output.name, list(model_output.dims)) == ("logits", [3])
        assert (root / model / model_output.label_filename).read_text().splitlines() == ["alpha", "beta", "gamma"]
    for model, source in ((name, "model.onnx"), (name + "_int8", "model_int8.onnx")):
        copy = repository / model / "1" / "model.onnx"
        assert sha256_file(copy) == sha256_file(out / source)
        graph = _onnx(copy).graph
        assert isinstance(_dims(graph.input[0])[0], str) and _dims(graph.input[0])[1:] == [3, 224, 224]
    plan = "triton-trt/{}_trt/1/model.plan".format(name)
    manifest = json.loads((out / "bundle.json").read_text())
    assert [p["also_write"] for p in manifest["engines"].values()] == [[plan]]
    assert "cp model_int8.engine {}".format(plan) in (out / "build_engine.sh").read_text()
    assert not (plans / name / "1").exists()  # the plan is built on the device only


def test_io_names_jetson_is_the_jetson_inference_target(tiny_run, tmp_path):
    result = CliRunner().invoke(main, ["export", str(tiny_run), "--io-names", "jetson", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "jetson-inference: {} (val top-1 ".format(tmp_path / "jetson-inference") in result.output
    model = onnx.load(str(tmp_path / "jetson-inference" / "model.onnx"))
    assert (model.graph.input[0].name, model.graph.output[0].name) == ("input_0", "output_0")
    assert onnx.load(str(tmp_path / "model.onnx")).graph.input[0].name == "input"  # the bundle keeps its names


def test_jetson_inference_refuses_other_normalisation_before_any_write(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(str(tiny_run), str(run))
    spec = PreprocessSpec.load(run / "preprocess.json")
    PreprocessSpec(spec.input_size, spec.resize_size, spec.mean, (0.5, 0.5, 0.5)).save(run / "preprocess.json")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["export", str(run), "--for", "jetson-inference", "--out", str(out)])
    assert result.exit_code == 1 and result.output.count("\n") == 1
    assert "imagenet hard-codes mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225)" in result.output
    assert "trained with (0.485, 0.456, 0.406) and (0.5, 0.5, 0.5)" in result.output and not out.exists()


@pytest.mark.parametrize(
    "options, error, message",
    [
        ({"targets": ("triton",), "batch": 1}, ConfigError, "^targets triton serves a dynamic batch"),
        ({"targets": ("deepstream",), "precision": "int8", "int8_form": "cpu"}, ConfigError, "rejects the cpu form"),
        ({"targets": ("caffe",)}, ConfigError, "^targets must be one of bundle, jetson-inference, deepstream, triton"),
    ],
)
def test_target_conflicts_are_one_line_errors(options, error, message):
    with pytest.raises(error, match=message):
        ExportConfig(run="models/x", **options)


def test_triton_without_tritonclient_names_the_package(tiny_run, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "tritonclient", None)  # as if not installed
    with pytest.raises(DependencyError, match="pip install tritonclient"):
        export_run(ExportConfig(run=str(tiny_run), out=str(tmp_path / "out"), targets=("triton",)))
    assert not (tmp_path / "out").exists()


def test_deepstream_defaults_to_the_tensorrt_int8_form():
    assert ExportConfig(run="x", targets=("deepstream",), precision="int8").resolved().int8_form == "trt"
    assert ExportConfig(run="x", targets=("triton",), precision="int8").resolved().int8_form == "cpu"


def test_the_command_of_a_config_gives_back_the_same_config(monkeypatch, tmp_path):
    import edgetl.export.job as job

    seen = {}
    monkeypatch.setattr(job, "export_run", lambda config, on_report=None: seen.update(config=config))
    config = ExportConfig(
        run=str(tmp_path), targets=("deepstream", "triton"), precision="int8", max_int8_drop=0.5, workspace_mib=512,
        trt_version="8.6", calib_method="entropy",
    )  # fmt: skip
    result = CliRunner().invoke(main, ["export", *command_args(config)])
    assert result.exit_code == 0, result.output
    assert seen["config"] == config
    resolved = config.resolved()
    assert CliRunner().invoke(main, ["export", *command_args(resolved)]).exit_code == 0
    assert seen["config"] == resolved


def test_labels_a_reader_would_split_are_refused(tmp_path):
    from edgetl.export.targets.common import write_labels

    for names, separator in ((["a;b", "c"], ";"), (["a", ""], "\n"), (["a\nb"], "\n"), ([" a"], "\n")):
        with pytest.raises(ConfigError, match="cannot be written"):
            write_labels(tmp_path / "labels.txt", names, separator)
    assert not (tmp_path / "labels.txt").exists()
