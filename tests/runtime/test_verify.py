"""edgetl verify on real exported bundles (ONNX Runtime): it passes as exported, fails (exit 3, one line) on a
tampered sample or model, and runs torch-free as ``python3 -m edgetl verify``. Engines need TensorRT and a GPU:
``test_build_engine_verifies_the_new_engine`` runs only where both are."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from edgetl.cli import main
from edgetl.contracts.bundle import MANIFEST, VERIFY_DATA_LOADER, VERIFY_SAMPLE, Bundle
from edgetl.contracts.preprocess import normalize
from edgetl.contracts.verify_sample import VerificationSample, read_sample, write_sample
from edgetl.export.verification import choose_rows, top1_margins
from edgetl.runtime.verify import TOLERANCES, verify_bundle

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def exported(tiny_bundle: Path) -> Path:
    return tiny_bundle


@pytest.fixture
def bundle(tiny_bundle: Path, tmp_path: Path) -> Path:
    """A private copy to tamper with."""
    copy = tmp_path / "bundle"
    shutil.copytree(str(tiny_bundle), str(copy))
    return copy


def _verify(path: Path, *options: str):
    return CliRunner().invoke(main, ["verify", str(path), *options])


def _set_manifest_sha(path: Path, key: str, file: Path, kind: str = "fp32") -> None:
    from edgetl.core.fileio import sha256_file

    manifest = json.loads((path / MANIFEST).read_text())
    entry = manifest["verification"] if key == "verification" else manifest["models"][kind]
    entry["sha256"] = sha256_file(file)
    (path / MANIFEST).write_text(json.dumps(manifest))


def test_the_export_writes_a_sample_of_16_crops_with_reference_outputs(exported: Path) -> None:
    entry = Bundle.load(exported).verification()
    sample = read_sample(exported / VERIFY_SAMPLE)
    assert entry["images"] == 16 == len(sample.pixels)
    assert entry["from_val"] == 12 and entry["from_train"] == 4  # the tiny run has 12 val images
    assert sample.pixels.shape == (16, 224, 224, 3) and sample.pixels.dtype == np.uint8
    assert 2.4e6 < (exported / VERIFY_SAMPLE).stat().st_size < 2.5e6
    assert sorted(sample.references) == ["fp32"] and sample.references["fp32"].shape == (16, 3)
    assert entry["tolerances"] == TOLERANCES


def test_verify_passes_on_the_exported_bundle(exported: Path) -> None:
    result = _verify(exported, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["status"] == "passed" and report["images"] == 16
    (check,) = report["checks"]
    assert check["file"] == "model.onnx" and check["status"] == "passed" and check["top1_agreements"] == 16
    assert check["max_abs_diff"] <= 1e-5


def test_python_m_edgetl_verify_is_torch_free(exported: Path) -> None:
    code = (
        "import runpy, sys\n"
        "sys.argv = ['edgetl', 'verify', {!r}]\n"
        "try:\n    runpy.run_module('edgetl', run_name='__main__')\n"
        "except SystemExit as exc:\n    print('exit', exc.code, 'torch' in sys.modules)\n"
    ).format(str(exported))
    result = subprocess.run([sys.executable, "-c", code], cwd=str(ROOT), capture_output=True, text=True, check=True)
    assert "model.onnx" in result.stdout and result.stdout.strip().endswith("exit 0 False"), result.stdout


def test_a_tampered_sample_file_fails_its_hash(bundle: Path) -> None:
    data = bytearray((bundle / VERIFY_SAMPLE).read_bytes())
    data[-100] ^= 0xFF
    (bundle / VERIFY_SAMPLE).write_bytes(bytes(data))
    result = _verify(bundle)
    assert result.exit_code == 3 and "changed after export" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_a_sample_whose_references_disagree_fails_on_top1_and_difference(bundle: Path) -> None:
    """A rewritten sample (hash updated too) whose references are another model's: the check itself fails."""
    sample = read_sample(bundle / VERIFY_SAMPLE)
    shifted = sample.references["fp32"].copy()
    shifted[np.arange(len(shifted)), shifted.argmin(1)] += 5.0  # another class wins on every image
    write_sample(bundle / VERIFY_SAMPLE, VerificationSample(sample.pixels, {"fp32": shifted}))
    _set_manifest_sha(bundle, "verification", bundle / VERIFY_SAMPLE)
    result = _verify(bundle)
    assert result.exit_code == 3, result.output
    assert "top-1 differs from the reference on 16 of 16 images" in result.output and "fp32 tolerance" in result.output
    assert len(result.output.strip().splitlines()) == 1


def _shift_bias(path: Path, by: float) -> None:
    model = onnx.load(str(path))
    bias = next(t for t in model.graph.initializer if t.name.endswith("head.bias"))
    values = onnx.numpy_helper.to_array(bias).copy()
    values[0] += by
    bias.CopyFrom(onnx.numpy_helper.from_array(values, bias.name))
    onnx.save(model, str(path))


def test_a_tampered_model_fails_its_hash(bundle: Path) -> None:
    _shift_bias(bundle / "model.onnx", 0.5)
    result = _verify(bundle)
    assert result.exit_code == 3 and "model.onnx: changed after export" in result.output


def test_a_replaced_model_fails_on_its_outputs(bundle: Path) -> None:
    """The model changed and bundle.json was updated to match: the outputs still betray it."""
    _shift_bias(bundle / "model.onnx", 0.5)
    _set_manifest_sha(bundle, "models", bundle / "model.onnx")
    result = _verify(bundle)
    assert result.exit_code == 3 and "max |difference| 0.5 > 0.02 (fp32 tolerance)" in result.output


def test_bad_requests_are_one_line_before_any_work(bundle: Path, tmp_path: Path) -> None:
    unknown = _verify(bundle, "--only", "model_fp16.engine")
    assert unknown.exit_code == 1 and "has no model or engine model_fp16.engine" in unknown.output
    manifest = json.loads((bundle / MANIFEST).read_text())
    del manifest["verification"]
    (bundle / MANIFEST).write_text(json.dumps(manifest))
    missing = _verify(bundle)
    assert missing.exit_code == 1 and "has no verification sample" in missing.output
    assert _verify(tmp_path / "nothing").exit_code == 1


def test_a_run_never_exported_is_not_a_bundle(tiny_run: Path) -> None:
    """A run folder has no bundle.json: verify says so and what to run, not that bundle.json lists no sample."""
    result = _verify(tiny_run)
    assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
    assert "is a run folder, not an exported bundle (it has no bundle.json)" in result.output
    assert "export it first with 'edgetl export {}'".format(tiny_run) in result.output
    assert "verification sample" not in result.output


def test_an_engine_without_tensorrt_is_listed_as_not_run(bundle: Path) -> None:
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here: the engine would run")
    (bundle / "model_fp32.engine").write_bytes(b"not an engine")  # listed in bundle.json by the export's plan
    report = verify_bundle(bundle)
    engine = next(c for c in report.checks if c.file == "model_fp32.engine")
    assert engine.status == "not run" and "tensorrt" in engine.detail and not report.failures
    refused = _verify(bundle, "--only", "model_fp32.engine")
    assert refused.exit_code == 1 and "cannot verify model_fp32.engine" in refused.output


def test_polygraphy_data_loader_feeds_what_verify_feeds(exported: Path) -> None:
    spec = importlib.util.spec_from_file_location("verify_data", str(exported / VERIFY_DATA_LOADER))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    batches = list(module.load_data())
    sample = read_sample(exported / VERIFY_SAMPLE)
    preprocess = Bundle.load(exported).preprocess
    assert len(batches) == 16 and list(batches[0]) == ["input"]
    fed = np.concatenate([b["input"] for b in batches])
    assert np.array_equal(fed, np.stack([normalize(p, preprocess) for p in sample.pixels]))


@pytest.mark.skipif(shutil.which("polygraphy", path=str(Path(sys.executable).parent)) is None, reason="no polygraphy")
def test_the_printed_polygraphy_command_runs_here_without_its_tensorrt_half(exported: Path) -> None:
    """build_engine.sh's fallback command, with --trt dropped (no TensorRT here): Polygraphy accepts every
    option and runs ONNX Runtime on all 16 crops of the data loader."""
    script = (exported / "build_engine.sh").read_text()
    line = next(line for line in script.splitlines() if "polygraphy run" in line)
    args = line.split("polygraphy run", 1)[1].strip(" '>&2").split()
    assert {"--trt", "--onnxrt", "--tf32", "--data-loader-script", "--atol", "--rtol"} <= set(args)
    polygraphy = str(Path(sys.executable).parent / "polygraphy")
    run = subprocess.run(
        [polygraphy, "run"] + [a for a in args if a != "--trt"], cwd=str(exported), capture_output=True, text=True
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "Iteration: 15" in run.stdout + run.stderr and "PASSED" in run.stdout + run.stderr


def test_sample_rows_are_dealt_over_classes_clearest_first() -> None:
    labels = np.array([0, 0, 0, 1, 1, 2])
    outputs = np.array([[1, 0, 0], [5, 0, 0], [3, 0, 0], [0, 2, 0], [0, 9, 0], [0, 0, 4]], dtype=np.float32)
    margins = top1_margins(outputs)
    assert margins.tolist() == [1, 5, 3, 2, 9, 4]
    assert choose_rows(labels, margins, 4) == [1, 4, 5, 2]
    assert choose_rows(labels, margins, 16) == [1, 4, 5, 2, 3, 0]


@pytest.mark.trt
def test_build_engine_verifies_the_new_engine(bundle: Path) -> None:
    """On a machine with TensorRT and a GPU: the fp32 engine passes its check on the sample."""
    result = CliRunner().invoke(main, ["build-engine", str(bundle), "--precision", "fp32"])
    assert result.exit_code == 0, result.output
    report = verify_bundle(bundle, ["model_fp32.engine"])
    assert report.checks[0].status == "passed"
