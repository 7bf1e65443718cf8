"""The ort-trt backend (ONNX Runtime's TensorRT execution provider) is offered only where a real session starts
on it: onnxruntime-gpu lists the provider on machines without TensorRT or a GPU, and a session asked for it
falls back to the CPU silently."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from edgetl.cli import main
from edgetl.contracts.bundle import Bundle
from edgetl.errors import DependencyError
from edgetl.runtime.classifier import Classifier, choose_backend
from edgetl.runtime.onnxrt import OnnxRuntimeRunner
from edgetl.runtime.providers import TENSORRT_PROVIDER, provider_problem

PROBLEM = provider_problem(TENSORRT_PROVIDER)
needs_no_provider = pytest.mark.skipif(PROBLEM is None, reason="ONNX Runtime's TensorRT provider runs here")


@needs_no_provider
def test_ort_trt_is_refused_with_the_reason_where_the_provider_does_not_run(tiny_bundle: Path, tmp_path: Path) -> None:
    with pytest.raises(DependencyError, match="TensorRT provider does not run here"):
        choose_backend(Bundle.load(tiny_bundle), "ort-trt")
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "frame.png")
    for args in (["predict", str(tiny_bundle), str(tmp_path / "frame.png")], ["bench", "latency", str(tiny_bundle)]):
        result = CliRunner().invoke(main, args + ["--backend", "ort-trt"])
        assert result.exit_code == 1 and "TensorRT provider does not run here" in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1


@needs_no_provider
def test_a_tensorrt_session_that_falls_back_is_refused_not_run_on_the_cpu(tiny_bundle: Path) -> None:
    with pytest.raises(DependencyError, match="did not start"):
        with OnnxRuntimeRunner(tiny_bundle / "model.onnx", device="tensorrt"):
            pass


@pytest.mark.gpu
def test_ort_trt_classifies_like_onnxruntime_where_the_provider_runs(tiny_bundle: Path) -> None:
    if PROBLEM is not None:
        pytest.skip("ONNX Runtime's TensorRT provider does not run here: " + PROBLEM)
    batch = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    bundle = Bundle.load(tiny_bundle)
    with Classifier(bundle, backend="ort-trt") as trt, Classifier(bundle, backend="onnx") as cpu:
        assert trt.runner.session.get_providers()[0] == TENSORRT_PROVIDER
        np.testing.assert_allclose(trt.classify_arrays(batch), cpu.classify_arrays(batch), atol=1e-2)
