"""The GPU self-check's runner and report: on a machine without CUDA every GPU check is skipped with its
reason, a failing check is reported as failed (never passed), and the JSON/Markdown are written atomically."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgetl.core import fileio
from edgetl.diagnostics import gpu_selfcheck as g
from edgetl.diagnostics import selfcheck_report as r


def no_cuda(tmp_path: Path, gpus: int = 0) -> g.Context:
    return g.Context(tmp_path / "work", cuda=gpus > 0, gpus=gpus)


def test_every_check_skips_with_its_reason_without_cuda(tmp_path):
    results = r.run_checks(g.CHECKS, no_cuda(tmp_path))
    assert [r.name for r in results] == [name for name, _ in g.CHECKS]
    for result in results:
        assert result.status == r.SKIPPED, result
        assert "no CUDA device" in result.reason and result.figures == {}
    assert not (tmp_path / "work").exists()  # nothing was trained or built to reach the skips


def test_multi_gpu_check_needs_more_than_one_gpu(tmp_path):
    [result] = r.run_checks([("multi", g.check_multi_gpu)], no_cuda(tmp_path, gpus=1))
    assert result.status == r.SKIPPED and result.reason == "needs more than one GPU (this machine has 1)"


def test_missing_module_and_weights_are_skips_with_the_reason(tmp_path, monkeypatch):
    ctx = no_cuda(tmp_path, gpus=1)
    with pytest.raises(r.Skip, match="no_such_module is not importable: because"):
        ctx.need_module("no_such_module", "because")

    def offline(spec):
        raise OSError("network unreachable")

    monkeypatch.setattr(g, "fetch_weights", offline)
    with pytest.raises(r.Skip, match="needs the pretrained mobilenet_v2 weights.*network unreachable"):
        ctx.weights()


def test_failing_and_erroring_checks_are_reported_as_failed(tmp_path):
    def misses_target(ctx):
        outcome = r.Outcome({"speedup": 1.2})
        outcome.expect(1.2 >= 2.0, "AMP >= 2x")
        return outcome

    def raises(ctx):
        raise RuntimeError("CUDA error: an illegal memory access")

    def passes(ctx):
        return r.Outcome({"ms": 1.0})

    results = r.run_checks([("slow", misses_target), ("crash", raises), ("fine", passes)], no_cuda(tmp_path))
    assert [(r.status, r.reason) for r in results] == [
        (r.FAILED, "target not met: AMP >= 2x"),
        (r.FAILED, "error: RuntimeError: CUDA error: an illegal memory access"),
        (r.PASSED, "all targets met"),
    ]
    assert results[0].figures == {"speedup": 1.2}


def test_report_is_written_atomically_as_json_and_markdown(tmp_path, monkeypatch):
    written = []
    real = fileio.atomic_write_text

    def spy(target, text):
        written.append(Path(target).name)
        real(target, text)

    monkeypatch.setattr(r, "atomic_write_text", spy)
    checks = [("fails", lambda ctx: r.Outcome({}, ["target not met: x"])), ("gpu", g.check_amp)]
    report = g.run_selfcheck(tmp_path / "out", "cmd --x", checks=checks, ctx=no_cuda(tmp_path))
    assert sorted(written) == ["gpu_selfcheck.json", "gpu_selfcheck.md"]
    assert report.failed and report.counts() == {"passed": 0, "failed": 1, "skipped": 1}
    data = json.loads(report.json_path.read_text())
    assert data["command"] == "cmd --x" and [r["status"] for r in data["results"]] == ["failed", "skipped"]
    markdown = report.markdown_path.read_text()
    assert "0 passed, 1 failed, 1 skipped" in markdown and "no CUDA device" in markdown
    assert not list((tmp_path / "out").glob(".*.tmp"))


def test_cli_gpu_selfcheck_writes_the_report_and_exits_zero_when_nothing_failed(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from edgetl.cli import main

    monkeypatch.setattr(g, "CHECKS", [("gpu", g.check_amp)])
    monkeypatch.setattr(g.Context, "detect", classmethod(lambda cls, work: cls(work, False, 0)))
    result = CliRunner().invoke(main, ["doctor", "--gpu-selfcheck", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "skipped  gpu: skipped: no CUDA device" in result.output
    assert (tmp_path / "gpu_selfcheck.md").is_file() and (tmp_path / "gpu_selfcheck.json").is_file()


def test_the_int8_selfcheck_gate_is_resolvable_on_the_demo_set():
    """The demo (4 classes x 24 train / 8 val) cannot resolve the default 1-point gate (299 images); the
    self-check's options give a gate that passes with up to INT8_TOLERATED disagreements and fails past them."""
    import numpy as np

    from edgetl.export.config import ExportConfig
    from edgetl.export.gate import images_needed, judge

    options = g.int8_selfcheck_options(96, 32)
    ExportConfig(run="unused", trt=True, **options)  # valid export options
    judged = 32 + options["gate_images"]
    assert options["calib_size"] == 48 and judged == 80
    assert images_needed(options["max_int8_drop"] / 100) <= judged
    reference = np.eye(4)[np.arange(judged) % 4]
    labels = np.arange(32) % 4
    for wrong, verdict in ((0, "passed"), (g.INT8_TOLERATED, "passed"), (g.INT8_TOLERATED + 1, "failed")):
        candidate = reference.copy()
        candidate[:wrong] = np.roll(candidate[:wrong], 1, axis=1)
        assert judge(reference, candidate, labels, options["max_int8_drop"], "x").verdict == verdict


def test_the_runner_gets_the_onnx_the_engine_was_built_from(tiny_run, tmp_path, monkeypatch):
    """An INT8 engine is built from model_int8.onnx and its sidecar records that file's sha256: given
    model.onnx the runner refuses it; the self-check takes the source from bundle.json's engine plan."""
    import fake_trt

    from edgetl.errors import CheckpointError
    from edgetl.export.job import ExportConfig, export_run
    from edgetl.runtime.tensorrt import TrtRunner
    from edgetl.trt.build import build_engine
    from edgetl.trt.plan import EnginePlan

    bundle = tmp_path / "bundle"
    options = dict(g.int8_selfcheck_options(24, 12), max_int8_drop=100.0)  # random-init model: plumbing only
    export_run(ExportConfig(run=str(tiny_run), out=str(bundle), batch=1, calib_dir=str(tmp_path / "c"), **options))
    fake_trt.install(monkeypatch, "10.3")
    plan = EnginePlan.from_dict(json.loads((bundle / "bundle.json").read_text())["engines"]["model_int8.engine"])
    engine = build_engine(bundle, plan)
    assert g.engine_source_onnx(bundle, engine.name) == bundle / "model_int8.onnx"
    with TrtRunner(engine, g.engine_source_onnx(bundle, engine.name)) as runner:
        assert runner.batch_range() == (1, 1)
    with pytest.raises(CheckpointError, match="refusing to load model_int8.engine"):
        with TrtRunner(engine, bundle / "model.onnx"):
            pass
