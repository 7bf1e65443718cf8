"""Device runtime: torch-free imports, Python 3.8 syntax, preprocessing parity, runners, predict."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from PIL import Image

from edgetl.cli import main
from edgetl.contracts.bundle import Bundle
from edgetl.contracts.preprocess import eval_array, load_rgb, torch_transforms
from edgetl.data.folders import DatasetSplit
from edgetl.errors import CheckpointError, ConfigError
from edgetl.export.fp16 import convert_to_fp16
from edgetl.export.job import ExportConfig, export_run
from edgetl.runtime.classifier import Classifier, choose_backend
from edgetl.runtime.onnxrt import OnnxRuntimeRunner
from edgetl.runtime.torch_runner import TorchRunner

ROOT = Path(__file__).resolve().parents[2]
HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


def test_numpy_preprocessing_equals_the_torch_eval_transform(demo_mobilenet_v2_run):
    bundle = Bundle.load(demo_mobilenet_v2_run)
    transform = torch_transforms(bundle.preprocess, train=False)
    paths = [s.path for s in DatasetSplit.load(demo_mobilenet_v2_run).val[::10]]
    sizes = set()
    for path in paths:
        img = load_rgb(path)
        sizes.add(img.size)
        diff = np.abs(eval_array(img, bundle.preprocess) - transform(img).numpy()).max()
        assert diff <= 1e-5, (path, diff)
    assert len(sizes) > 1  # real JPEGs of different shapes


@pytest.fixture(scope="module")
def int8_bundle(demo_mobilenet_v2_run, tmp_path_factory):
    """fp32 + baked + INT8 (CPU form) bundle of the real run, on a few validation images (fast)."""
    out = tmp_path_factory.mktemp("runtime_bundle")
    export_run(
        ExportConfig(
            run=str(demo_mobilenet_v2_run),
            out=str(out),
            bake_preprocess=True,
            precision="int8",
            calib_size=16,
            max_int8_drop=100.0,
            val_images=8,
            gate_images=8,
            calib_dir=str(out / "calibration"),
        )
    )
    return out


def test_backends_agree_on_real_images(int8_bundle, demo_mobilenet_v2_run):
    paths = [s.path for s in DatasetSplit.load(demo_mobilenet_v2_run).val[::8]]
    results = {}
    for backend in ("onnx", "torch"):
        with Classifier(Bundle.load(int8_bundle), backend=backend, topk=2) as classifier:
            results[backend] = [r for _, r in classifier.classify_paths(paths)]
    for onnx_result, torch_result in zip(results["onnx"], results["torch"]):
        assert onnx_result.labels == torch_result.labels
        assert onnx_result.probabilities == pytest.approx(torch_result.probabilities, abs=1e-4)
        assert onnx_result.probabilities[0] >= onnx_result.probabilities[1]


def test_baked_model_classifies_like_the_fp32_model(int8_bundle, demo_mobilenet_v2_run):
    bundle = Bundle.load(int8_bundle)
    images = [load_rgb(s.path) for s in DatasetSplit.load(demo_mobilenet_v2_run).val[::20]]
    with Classifier(bundle, backend="onnx") as fp32:
        expected = fp32.classify_arrays(np.stack([fp32.preprocess(img) for img in images]))
    del bundle.manifest["models"]["fp32"]  # leaves only the baked model for the onnx backend
    with Classifier(bundle, backend="onnx") as baked:
        assert baked.input_layout == "NHWC"
        assert baked.preprocess(images[0]).dtype == np.uint8
        got = baked.classify_arrays(np.stack([baked.preprocess(img) for img in images]))
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_choose_backend_rules(int8_bundle, demo_mobilenet_v2_run, tiny_run):
    bundle = Bundle.load(int8_bundle)
    assert choose_backend(bundle, "onnx-int8").model.file == "model_int8.onnx"
    assert choose_backend(bundle, "auto").backend == ("trt" if HAS_TENSORRT and bundle.engines() else "onnx")
    with pytest.raises(CheckpointError, match="no TensorRT engine"):
        choose_backend(bundle, "trt")
    run_only = Bundle.load(tiny_run)  # a run folder that was never exported: PyTorch only
    assert choose_backend(run_only, "auto").backend == "torch"
    with pytest.raises(CheckpointError, match="edgetl export"):
        choose_backend(run_only, "onnx")
    with pytest.raises(CheckpointError, match="--int8"):
        choose_backend(run_only, "onnx-int8")
    with pytest.raises(ConfigError, match="backend must be one of"):
        choose_backend(run_only, "tflite")


def test_verify_passes_on_the_real_bundle_with_every_model(int8_bundle):
    """fp32, baked (uint8 NHWC) and INT8 (cpu form) each run on the 16-crop sample against their references."""
    from edgetl.runtime.verify import verify_bundle

    report = verify_bundle(int8_bundle)
    assert [c.file for c in report.checks] == ["model.onnx", "model_baked.onnx", "model_int8.onnx"]
    assert all(c.status == "passed" and c.top1_agreements == c.images == 16 for c in report.checks), report.failures


def test_not_a_bundle_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="neither an exported bundle"):
        Bundle.load(tmp_path)


def test_runner_checks_the_feed(int8_bundle):
    with OnnxRuntimeRunner(int8_bundle / "model.onnx") as runner:
        good = np.zeros((2, 3, 224, 224), np.float32)
        assert runner.infer({"input": good})["logits"].shape == (2, 4)
        with pytest.raises(ConfigError, match="takes inputs"):
            runner.infer({"x": good})
        with pytest.raises(ConfigError, match="must be float32"):
            runner.infer({"input": good.astype(np.float64)})
        with pytest.raises(ConfigError, match="must have shape"):
            runner.infer({"input": np.zeros((1, 3, 200, 224), np.float32)})


def test_torch_runner_has_the_same_shape(demo_mobilenet_v2_run):
    with TorchRunner(demo_mobilenet_v2_run) as runner:
        assert runner.infer({"input": np.zeros((1, 3, 224, 224), np.float32)})["logits"].shape == (1, 4)


def test_fp16_conversion_runs_in_onnxruntime_close_to_fp32(int8_bundle, tmp_path):
    fp16 = convert_to_fp16(onnx.load(str(int8_bundle / "model.onnx")))
    onnx.checker.check_model(fp16, full_check=True)
    assert fp16.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # float32 I/O kept
    assert {t.data_type for t in fp16.graph.initializer} == {onnx.TensorProto.FLOAT16}
    onnx.save(fp16, str(tmp_path / "fp16.onnx"))
    x = np.random.default_rng(0).standard_normal((4, 3, 224, 224)).astype(np.float32)
    with OnnxRuntimeRunner(int8_bundle / "model.onnx") as a, OnnxRuntimeRunner(tmp_path / "fp16.onnx") as b:
        expected, got = a.infer({"input": x})["logits"], b.infer({"input": x})["logits"]
    assert np.abs(got - expected).max() <= 0.02 * np.abs(expected).max()
    assert (got.argmax(1) == expected.argmax(1)).all()


def test_predict_cli_reports_unreadable_files_and_continues(int8_bundle, demo_mobilenet_v2_run, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i, sample in enumerate(DatasetSplit.load(demo_mobilenet_v2_run).val[:2]):
        Image.open(sample.path).save(images / "img{}.png".format(i))
    (images / "broken.jpg").write_bytes(b"not a jpeg")
    (images / "notes.txt").write_text("ignored: not an image suffix")
    result = CliRunner().invoke(
        main, ["predict", str(int8_bundle), str(images), "--topk", "2", "--backend", "onnx-int8"]
    )
    assert result.exit_code == 1
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2 and all(line.split(": ", 1)[1].count("%") == 2 for line in lines)
    assert "broken.jpg: error: unreadable image" in result.stderr and "1 of 3 image(s)" in result.stderr

    result = CliRunner().invoke(
        main, ["predict", str(int8_bundle), str(images / "img0.png"), "--json", "--backend", "onnx"]
    )
    assert result.exit_code == 0
    (record,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert record["image"].endswith("img0.png") and len(record["top"]) == 4
    assert sum(t["probability"] for t in record["top"]) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.trt
def test_tensorrt_engine_matches_onnxruntime(int8_bundle, demo_mobilenet_v2_run):
    from edgetl.trt.build import build_bundle_engine

    build_bundle_engine(int8_bundle, "fp32")
    paths = [s.path for s in DatasetSplit.load(demo_mobilenet_v2_run).val[::10]]
    with Classifier(Bundle.load(int8_bundle), backend="trt") as trt, Classifier(
        Bundle.load(int8_bundle), backend="onnx"
    ) as ort:
        for (_, a), (_, b) in zip(trt.classify_paths(paths), ort.classify_paths(paths)):
            assert a.labels[0] == b.labels[0]
            assert a.probabilities[0] == pytest.approx(b.probabilities[0], abs=1e-3)
