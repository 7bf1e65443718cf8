"""The INT8 recovery ladder: its options, order, stopping and budget, and the head step on a model built so
that plain INT8 loses exactly what the fp32 head relies on while the quantized features still hold the classes
(behaviour, not a margin one CPU happens to meet)."""

import hashlib
import json

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from pattern_models import SPEC, red_blue_model
from torch import nn

from edgetl.errors import ConfigError
from edgetl.export.config import ExportConfig
from edgetl.export.head_resolve import head_gemm
from edgetl.export.int8_step import HeadRefit, Int8Step
from edgetl.export.parity import normalized, onnx_outputs
from edgetl.export.quantize import ImageCalibrationReader
from edgetl.export.recover import SKIPPED, Attempt, recovery_lines, run_ladder
from edgetl.export.recover_options import recovery_steps


@pytest.mark.parametrize(
    "value, fallback, steps",
    [("auto", "auto", ("head", "fallback")), ("none", "auto", ()), ("fallback,head", "auto", ("head", "fallback")),
     ("fallback", "auto", ("fallback",)), ("auto", "none", ("head",)), (" head ", "auto", ("head",))],
)  # fmt: skip
def test_recover_option_lists_steps_cheapest_first(value, fallback, steps):
    assert recovery_steps(value, fallback) == steps


@pytest.mark.parametrize(
    "options, message",
    [({"int8_recover": "qat"}, "int8_recover must be auto, none or a comma list of head, fallback"),
     ({"int8_recover": ""}, "int8_recover must be"),
     ({"int8_recover_budget": 0}, "int8_recover_budget must be > 0")],
)  # fmt: skip
def test_recover_options_are_validated(options, message):
    with pytest.raises(ConfigError, match=message):
        ExportConfig(run="r", precision="int8", **options)


def _steps(verdicts, calls, cost=1.0, clock=None):
    """Steps that record their call, advance the fake clock by ``cost`` and return the given verdict."""

    def step(name, verdict, bound):
        def run(deadline):
            calls.append(name)
            if clock is not None:
                clock[0] += cost
            return Attempt(name, verdict, "test", 0.9, bound), f"{name}.onnx" if verdict == "passed" else None

        return run

    return {name: step(name, verdict, bound) for name, (verdict, bound) in verdicts.items()}


def test_ladder_stops_at_the_first_step_that_passes():
    calls = []
    result = run_ladder(("head", "fallback"), _steps({"head": ("passed", 0.5), "fallback": ("passed", 0.1)}, calls), 60)
    assert calls == ["head"] and result.passed.step == "head" and result.passing_file == "head.onnx"
    record = result.to_dict()
    assert record["status"] == "passed" and record["passed_step"] == "head" and len(record["attempts"]) == 1
    assert recovery_lines({"recovery": record})[-1].startswith("INT8 recovered by step head")


def test_ladder_without_a_pass_reports_the_best_attempt():
    calls = []
    result = run_ladder(("head", "fallback"), _steps({"head": ("failed", 3.0), "fallback": ("failed", 1.5)}, calls), 60)
    assert calls == ["head", "fallback"] and result.passed is None
    assert result.best().step == "fallback" and result.to_dict()["best_step"] == "fallback"
    assert recovery_lines({"recovery": result.to_dict()})[-1] == "INT8 recovery failed; best step: fallback"


def test_a_spent_budget_skips_the_remaining_steps():
    calls, clock = [], [0.0]
    steps = _steps({"head": ("failed", 3.0), "fallback": ("passed", 0.5)}, calls, cost=10.0, clock=clock)
    result = run_ladder(("head", "fallback"), steps, 5.0, clock=lambda: clock[0])
    assert calls == ["head"]  # a running step is not interrupted; the next one does not start
    assert [(a.step, a.verdict) for a in result.attempts] == [("head", "failed"), ("fallback", SKIPPED)]
    assert result.to_dict()["budget_spent"] and result.best().step == "head" and result.attempts[0].seconds == 10.0


class _CrushedFeatures(nn.Module):
    """Pooled features [0.01 R, 0.01 B, 1000, 300 R, 300 B] (R, B: an image's normalised red and blue): the
    constant 1000 sets the head input's INT8 scale (about 8), which rounds the first two features to 0 while
    the last two survive. The fp32 head reads only the first two, so plain INT8 gives every image one class;
    a head solved on the INT8 features can read the last two."""

    def __init__(self) -> None:
        super().__init__()
        self.base = nn.Conv2d(3, 5, 1)
        self.head = nn.Linear(5, 2)
        with torch.no_grad():
            self.base.weight.zero_()
            self.base.bias.zero_()
            self.base.weight[0, 0, 0, 0], self.base.weight[1, 2, 0, 0] = 0.01, 0.01
            self.base.bias[2] = 1000.0
            self.base.weight[3, 0, 0, 0], self.base.weight[4, 2, 0, 0] = 300.0, 300.0
            self.head.weight.zero_()
            self.head.bias.zero_()
            self.head.weight[0, 0], self.head.weight[0, 1] = 1000.0, -1000.0
            self.head.weight[1] = -self.head.weight[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.base(x).mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def crushed(tmp_path_factory):
    """The model as ONNX, and red/blue pattern images (kinds 0-1 red: class 0) split in half: judged, fitted."""
    made = red_blue_model(tmp_path_factory.mktemp("crushed"), _CrushedFeatures())
    images = made["images"]
    images.labels = (images.labels >= 2).astype(np.int64)
    return dict(made, judged=np.arange(len(images)) % 2 == 0)


def _prepare(crops):
    return normalized(crops, SPEC)


def _step(crushed, tmp_path, form, **options):
    options = dict(dict(run="unused", precision="int8", int8_form=form, max_int8_drop=5.0), **options)
    config = ExportConfig(**options).resolved()
    images, judged = crushed["images"], crushed["judged"]
    crops = images.crops[judged]

    def outputs(path):
        return {"val_top1": 0.0}, onnx_outputs(path, crops, None, prepare=_prepare, optimize=form == "cpu")

    reference = outputs(crushed["model"])[1]
    labels = images.labels[judged]
    fit = type(images)(
        [p for p, j in zip(images.paths, judged) if not j], images.labels[~judged], images.crops[~judged]
    )
    head = HeadRefit(labels, lambda: fit, 2, _prepare, {"images": len(labels)})
    reader = ImageCalibrationReader(crushed["samples"][::5], SPEC, "input")
    step = Int8Step(config, crushed["model"], reader, {}, 8, outputs, reference, labels, tmp_path, head=head)
    return step, reference, labels


@pytest.mark.parametrize("form", ["cpu", "trt"])
def test_head_step_solves_the_head_on_int8_features_and_passes_the_paired_gate(crushed, tmp_path, form):
    fp32_bytes = crushed["model"].read_bytes()
    step, reference, labels = _step(crushed, tmp_path, form, int8_recover="head")
    assert (reference.argmax(1) == labels).mean() == 1.0  # fp32 tells red from blue
    path = tmp_path / "model_int8.onnx"
    step.write(path)
    section = step.sections[path]
    recovery = section["recovery"]
    assert recovery["without_recovery"]["verdict"] == "failed"  # plain INT8: one class for every image
    assert recovery["status"] == "passed" and recovery["passed_step"] == "head"
    (attempt,) = recovery["attempts"]
    assert attempt["step"] == "head" and attempt["verdict"] == "passed" and "Tango" in attempt["criterion"]
    paired = section["paired_gate"]
    assert paired["verdict"] == "passed" and paired["fp32_right_int8_wrong"] == 0 and paired["images"] == 80
    assert section["failures"] == [] and section["accuracy_gate"]["images"] == 80  # both criteria reported
    # the head in the file is the re-solved one, quantized; its float weights' sha256 is recorded
    model = onnx.load(str(path))
    metadata = {p.key: p.value for p in model.metadata_props}
    assert metadata["int8_head_weights_sha256"] == section["head_solve"]["weights_sha256"] == attempt["details"][
        "head_solve"]["weights_sha256"]  # fmt: skip
    derived = onnx.load(str(tmp_path / "fp32_head.onnx"))
    gemm = head_gemm(derived)
    arrays = {i.name: numpy_helper.to_array(i) for i in derived.graph.initializer}
    weight, bias = arrays[gemm.input[1]], arrays[gemm.input[2]]
    assert hashlib.sha256(weight.tobytes() + bias.tobytes()).hexdigest() == metadata["int8_head_weights_sha256"]
    assert np.abs(weight[:, 3:]).max() > np.abs(weight[:, :2]).max()  # it reads the features INT8 kept
    assert json.loads(metadata["int8_fp32_layers"]) == []  # no layer left in fp32
    assert crushed["model"].read_bytes() == fp32_bytes  # the fp32 model is never touched


def test_ladder_never_runs_when_plain_int8_passes(crushed, tmp_path):
    step, _, _ = _step(crushed, tmp_path, "cpu", max_int8_drop=100.0)
    path = tmp_path / "model_int8.onnx"
    step.write(path)
    section = step.sections[path]
    assert section["accuracy_gate"]["verdict"] == "passed"
    assert section["recovery"] == {"status": "not needed", "steps": ["head", "fallback"]}
    assert not (tmp_path / "fp32_head.onnx").exists() and not list(tmp_path.glob("int8_fallback_*"))


def test_head_step_does_not_apply_without_a_linear_head_and_the_fallback_follows(crushed, tmp_path):
    step, _, _ = _step(crushed, tmp_path, "cpu")
    step.head.not_applicable = "the run is not a feature extractor with a linear head"
    path = tmp_path / "model_int8.onnx"
    step.write(path)
    attempts = step.sections[path]["recovery"]["attempts"]
    assert attempts[0] == dict(attempts[0], step="head", verdict="not applicable: the run is not a feature "
                               "extractor with a linear head")  # fmt: skip
    assert attempts[1]["step"] == "fallback" and step.sections[path]["fallback"]["attempts"]


@pytest.fixture(scope="module")
def tiny_feature_run(tmp_path_factory):
    """A feature extractor (random base, solved linear head) on tiny pattern images."""
    from conftest import TINY_ARCH, write_patterns

    from edgetl.train.config import FinetuneConfig
    from edgetl.train.loop import finetune

    root = tmp_path_factory.mktemp("tiny_fe")
    parts = {part: dict.fromkeys(("alpha", "beta", "gamma"), n) for part, n in (("train", 8), ("val", 4))}
    write_patterns(root / "data", parts, 48, np.random.default_rng(1), "{i}.jpg")
    config = FinetuneConfig(
        data=str(root / "data"), arch=TINY_ARCH, strategy="feature-extractor", weights="none", batch_size=8,
        workers=0, out=str(root / "run"),
    )  # fmt: skip
    return finetune(config, progress=False).run_dir


def test_fp32_artifacts_are_byte_identical_with_and_without_the_ladder(tiny_feature_run, tmp_path):
    """Calibrated on one flat grey image, INT8 clips nearly every activation of real images: plain INT8 misses
    a 20-point gate and the ladder runs; nothing of the fp32 side changes, and no ladder decision reaches the
    saved config."""
    from PIL import Image

    from edgetl.errors import GateError
    from edgetl.export.job import export_run

    grey = tmp_path / "grey"
    grey.mkdir()
    Image.new("RGB", (48, 48), (128, 128, 128)).save(grey / "grey.png")
    reports = {}
    for recover in ("none", "auto"):
        config = ExportConfig(
            run=str(tiny_feature_run), out=str(tmp_path / recover), precision="int8", int8_form="cpu",
            calib_data=str(grey), max_int8_drop=20.0, int8_recover=recover, calib_dir=str(tmp_path / "calibration"),
        )  # fmt: skip
        try:
            reports[recover] = export_run(config)
        except GateError:
            reports[recover] = json.loads((tmp_path / recover / "export_report.json").read_text())
    (plain,) = [a for a in reports["none"]["artifacts"] if a["kind"] == "int8"]
    (laddered,) = [a for a in reports["auto"]["artifacts"] if a["kind"] == "int8"]
    assert plain["accuracy_gate"]["verdict"] == "failed" and plain["recovery"]["status"] == "not tried"
    assert [a["step"] for a in laddered["recovery"]["attempts"]][0] == "head"
    assert laddered["recovery"]["without_recovery"]["disagreements"] == plain["accuracy_gate"]["disagreements"]
    for name in ("model.onnx", "preprocess.json", "labels.txt"):
        assert (tmp_path / "none" / name).read_bytes() == (tmp_path / "auto" / name).read_bytes(), name
    assert "recovery" not in reports["auto"]["config"] and "passed_step" not in json.dumps(reports["auto"]["config"])
