"""INT8 accuracy-aware fallback: the search, the one-pass ranking, and the export step on a model built
to be sensitive to quantization in one known layer (behaviour, not a margin one CPU happens to meet)."""

import json

import numpy as np
import onnx
import pytest
import torch
from pattern_models import SPEC, red_blue_model
from torch import nn

from edgetl.contracts.formats import INT8_CPU_FORMS
from edgetl.errors import ConfigError
from edgetl.export.config import ExportConfig
from edgetl.export.fallback import FallbackAttempt, rank_layers, search_fallback
from edgetl.export.int8_step import Int8Step
from edgetl.export.parity import normalized, onnx_outputs
from edgetl.export.quantize import ImageCalibrationReader, quantize_onnx
from edgetl.export.report import format_report

SENSITIVE = "/mix/Conv"


def _oracle(passes_from):
    """An attempt function whose gate passes with at least ``passes_from`` layers (records the calls)."""
    calls = []

    def attempt(nodes):
        calls.append(len(nodes))
        verdict = "passed" if len(nodes) >= passes_from else "failed"
        return FallbackAttempt(len(nodes), 0 if verdict == "passed" else 9, 0.5, verdict)

    return attempt, calls


def _ranking(count):
    from edgetl.export.fallback import LayerScore

    return [LayerScore("layer{}".format(i), "Conv", 1.0 / (i + 1), 1.0) for i in range(count)]


@pytest.mark.parametrize(
    "passes_from, cap, calls, kept",
    [
        (5, 8, [1, 2, 4, 8, 6, 5], 5),  # doubling, then bisection between 4 (failed) and 8 (passed)
        (1, 8, [1], 1),
        (6, 6, [1, 2, 4, 6, 5], 6),  # the cap itself is tried when doubling would overshoot it
        (10, 8, [1, 2, 4, 8], 0),  # nothing up to the cap passes: no layer is kept
        (3, 20, [1, 2, 4, 3], 3),
    ],
)
def test_search_keeps_the_fewest_top_ranked_layers_that_pass(passes_from, cap, calls, kept):
    attempt, seen = _oracle(passes_from)
    search = search_fallback(_ranking(12), attempt, cap)
    assert seen == calls
    assert search.kept_fp32 == ["layer{}".format(i) for i in range(kept)]
    assert search.passed == bool(kept)
    assert [a.layers for a in search.attempts] == calls


def test_search_never_tries_more_layers_than_are_ranked():
    attempt, seen = _oracle(99)
    assert not search_fallback(_ranking(3), attempt, 8).passed
    assert seen == [1, 2, 3]


class _OneSensitiveLayer(nn.Module):
    """Logits follow the mean red minus blue of the image, carried by small channels next to one huge
    channel: per-tensor INT8 of ``mix``'s input rounds the small channels to zero, so every image gets
    the same class, while ``mix`` kept in fp32 sees them exactly. A ReLU before ``mix`` (which the cpu
    form folds into the Q/DQ range) zeroes a negative channel that would otherwise outvote the colour."""

    def __init__(self) -> None:
        super().__init__()
        self.spread = nn.Conv2d(3, 5, 1)
        self.mix = nn.Conv2d(5, 2, 1)
        self.head = nn.Linear(2, 2)
        with torch.no_grad():
            self.spread.weight.zero_()
            self.spread.bias.zero_()
            for channel in range(3):
                self.spread.weight[channel, channel] = 0.01
            self.spread.weight[3] = 1000.0
            self.spread.bias[4] = -0.1  # zero after the ReLU; unclipped, it decides every image
            self.mix.weight.zero_()
            self.mix.bias.zero_()
            self.mix.weight[0, 0], self.mix.weight[0, 2], self.mix.weight[0, 4] = 100.0, -100.0, 1000.0
            self.mix.weight[1] = -self.mix.weight[0]
            self.head.weight.copy_(torch.eye(2))
            self.head.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.mix(torch.relu(self.spread(x))).mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def sensitive(tmp_path_factory):
    """The sensitive model as ONNX, and red/blue pattern images (kinds 0-1 red, 2-3 blue)."""
    return red_blue_model(tmp_path_factory.mktemp("sensitive"), _OneSensitiveLayer())


def _step(sensitive, tmp_path, form, **options):
    config = ExportConfig(run="unused", precision="int8", int8_form=form, max_int8_drop=5.0, **options).resolved()
    images = sensitive["images"]

    def outputs(path):
        result = onnx_outputs(path, images.crops, None, prepare=lambda c: normalized(c, SPEC), optimize=form == "cpu")
        return {}, result

    reference = outputs(sensitive["model"])[1]
    reader = ImageCalibrationReader(sensitive["samples"][::5], SPEC, "input")
    labels = (images.labels >= 2).astype(np.int64)  # red (kinds 0, 1) is class 0
    step = Int8Step(config, sensitive["model"], reader, {}, 8, outputs, reference, labels, tmp_path)
    return step, reference, labels


def test_the_sensitive_layer_ranks_first(sensitive, tmp_path):
    reader = ImageCalibrationReader(sensitive["samples"][::5], SPEC, "input")
    quantize_onnx(sensitive["model"], tmp_path / "int8.onnx", reader, "cpu", "minmax", INT8_CPU_FORMS["vnni"])
    ranking = rank_layers(sensitive["model"], tmp_path / "int8.onnx", reader, 16)
    assert ranking[0].node == SENSITIVE
    assert ranking[0].added_noise > 0.5 > max(s.added_noise for s in ranking[1:])


@pytest.mark.parametrize("form", ["cpu", "trt"])
def test_fallback_keeps_the_sensitive_layer_in_fp32_and_passes_the_gate(sensitive, tmp_path, form):
    step, reference, labels = _step(sensitive, tmp_path, form)
    assert (reference.argmax(1) == labels).mean() == 1.0  # fp32 tells red from blue
    path = tmp_path / "model_int8.onnx"
    step.write(path)
    section = step.sections[path]
    fallback = section["fallback"]
    assert fallback["without_fallback"]["verdict"] == "failed"
    assert fallback["without_fallback"]["disagreements"] >= len(labels) // 3
    kept = [SENSITIVE]
    assert fallback["status"] == "passed" and fallback["kept_fp32"] == kept
    assert section["accuracy_gate"]["verdict"] == "passed" and section["failures"] == []
    assert [a["layers"] for a in fallback["attempts"]] == list(range(1, len(kept) + 1))
    # the file in place is the model with the fallback: no Q/DQ left on the sensitive layer's inputs
    model = onnx.load(str(path))
    producer = {out: node.op_type for node in model.graph.node for out in node.output}
    mix = next(node for node in model.graph.node if node.name == SENSITIVE)
    assert all(producer.get(name) != "DequantizeLinear" for name in mix.input)
    metadata = {p.key: p.value for p in model.metadata_props}
    assert json.loads(metadata["int8_fp32_layers"]) == kept
    assert ("latency" in fallback) == (form == "cpu")  # the TensorRT form's cost is the engine's
    if form == "cpu":
        latency = fallback["latency"]
        assert latency["fallback_p50_ms"] > 0 and latency["speedup_vs_fp32_with_fallback"] > 0
    lines = format_report({"artifacts": [dict(section, file="model_int8.onnx", status="passed", int8_form=form)],
                           "failures": []})  # fmt: skip
    assert "INT8 fallback: {} layer(s) kept in fp32".format(len(kept)) in lines and SENSITIVE in lines


def test_without_fallback_the_sensitive_model_fails_its_gate(sensitive, tmp_path):
    step, _, _ = _step(sensitive, tmp_path, "cpu", int8_fallback="none")
    path = tmp_path / "model_int8.onnx"
    step.write(path)
    section = step.sections[path]
    assert section["fallback"] == {"status": "not tried"}
    assert section["accuracy_gate"]["verdict"] == "failed" and section["failures"]
    assert "int8_fp32_layers" in {p.key for p in onnx.load(str(path)).metadata_props}


def test_a_cap_too_small_fails_with_a_line_saying_what_to_raise(sensitive, tmp_path, monkeypatch):
    import edgetl.export.fallback as fallback

    step, _, _ = _step(sensitive, tmp_path, "trt", int8_fallback_max_layers=1)
    real_rank = fallback.rank_layers
    # the sensitive layer ranked last: one fp32 layer (the cap) cannot reach the gate
    monkeypatch.setattr(
        "edgetl.export.int8_step.rank_layers", lambda *a: sorted(real_rank(*a), key=lambda s: s.node == SENSITIVE)
    )
    path = tmp_path / "model_int8.onnx"
    step.write(path)
    section = step.sections[path]
    assert section["fallback"]["status"] == "failed" and section["fallback"]["kept_fp32"] == []
    assert any("--int8-fallback-max-layers" in f for f in section["failures"])


@pytest.mark.parametrize(
    "options, message",
    [({"int8_fallback": "always"}, "int8_fallback must be one of auto, none"),
     ({"int8_fallback_max_layers": 0}, "int8_fallback_max_layers must be >= 1")],
)  # fmt: skip
def test_fallback_options_are_validated(options, message):
    with pytest.raises(ConfigError, match=message):
        ExportConfig(run="r", precision="int8", **options)


def test_report_without_fallback_says_nothing_about_it():
    entry = {"file": "model_int8.onnx", "status": "passed", "fallback": {"status": "not needed"}}
    assert "fallback" not in format_report({"artifacts": [entry], "failures": []})
