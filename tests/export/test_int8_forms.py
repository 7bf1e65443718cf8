"""The CPU INT8 form follows the instruction set it is built for (VNNI, AVX2 without VNNI, ARM64):
flags read from /proc/cpuinfo, the quantized types written, the bundle's record, the runtime's warning."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgetl.contracts.bundle import Bundle
from edgetl.contracts.formats import INT8_CPU_FORMS
from edgetl.core.cpu import cpu_flags, cpu_isa
from edgetl.export.job import ExportConfig, export_run
from edgetl.runtime.classifier import warn_if_built_for_another_cpu

EPYC_FLAGS = frozenset("fpu sse4_2 avx avx2 fma bmi2 sha_ni".split())  # AMD EPYC (Zen 2): AVX2, no VNNI
CASCADE_LAKE_FLAGS = EPYC_FLAGS | {"avx512f", "avx512bw", "avx512_vnni"}
ALDER_LAKE_FLAGS = EPYC_FLAGS | {"avx_vnni"}


def test_isa_from_cpu_flags() -> None:
    assert cpu_isa(EPYC_FLAGS, "x86_64") == "avx2"
    assert cpu_isa(CASCADE_LAKE_FLAGS, "x86_64") == "vnni"
    assert cpu_isa(ALDER_LAKE_FLAGS, "x86_64") == "vnni"
    assert cpu_isa(frozenset({"fp", "asimd", "asimddp"}), "aarch64") == "arm64"


def test_form_names_follow_onnxruntime() -> None:
    assert {isa: form.name for isa, form in INT8_CPU_FORMS.items()} == {
        "vnni": "U8S8",
        "avx2": "U8S8 reduce_range",
        "arm64": "S8S8",
    }


def test_cpu_flags_are_read_from_cpuinfo(tmp_path: Path) -> None:
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu avx2 fma\n\nprocessor\t: 1\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd asimddp\n")
    assert cpu_flags(x86) == {"fpu", "avx2", "fma"}
    assert cpu_flags(arm) == {"fp", "asimd", "asimddp"}
    assert cpu_flags(tmp_path / "missing") == frozenset()


def _types(model: onnx.ModelProto) -> tuple:
    """(activation zero-point types, weight types) of a Q/DQ model."""
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    activations = {inits[n.input[2]].dtype for n in model.graph.node if n.op_type == "QuantizeLinear"}
    weights = {
        inits[n.input[0]].dtype
        for n in model.graph.node
        if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].ndim == 4
    }
    return activations, weights


def _largest_conv_weight(model: onnx.ModelProto) -> int:
    """The largest |quantized value| of the convolution weights: 127 for 8-bit, 64 for reduce_range's 7 bits."""
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    weights = [inits[n.input[0]] for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    return max(int(np.abs(w.astype(np.int64)).max()) for w in weights if w.ndim == 4)


@pytest.mark.parametrize(
    "isa,activations,weights,seven_bit",
    [("vnni", np.uint8, np.int8, False), ("avx2", np.uint8, np.int8, True), ("arm64", np.int8, np.int8, False)],
)
def test_cpu_form_is_built_for_the_named_isa(
    tiny_run: Path, tmp_path: Path, isa: str, activations, weights, seven_bit: bool
) -> None:
    report = export_run(
        ExportConfig(
            run=str(tiny_run),
            out=str(tmp_path),
            precision="int8",
            int8_form="cpu",
            int8_cpu_isa=isa,
            calib_size=12,
            calib_dir=str(tmp_path / "calibration"),
            max_int8_drop=100.0,
        )
    )  # a random-init model: this test is about the form
    model = onnx.load(str(tmp_path / "model_int8.onnx"))
    assert _types(model) == ({np.dtype(activations)}, {np.dtype(weights)})
    assert (_largest_conv_weight(model) <= 64) == seven_bit
    entry = report["artifacts"][1]
    assert entry["int8_cpu_isa"] == isa and entry["int8_cpu_form"] == INT8_CPU_FORMS[isa].name
    assert "cpu_isa_flags" in entry
    assert Bundle.load(tmp_path).model("int8").int8_cpu_isa == isa


def test_auto_builds_for_this_machine(tiny_run: Path) -> None:
    assert ExportConfig(run=str(tiny_run), precision="int8").resolved().int8_cpu_isa == cpu_isa()


def test_runtime_warns_when_the_cpu_differs(tiny_run: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    export_run(
        ExportConfig(
            run=str(tiny_run),
            out=str(tmp_path),
            precision="int8",
            int8_form="cpu",
            int8_cpu_isa="arm64",
            calib_size=12,
            calib_dir=str(tmp_path / "calibration"),
            max_int8_drop=100.0,
        )
    )
    model = Bundle.load(tmp_path).model("int8")
    with caplog.at_level(logging.WARNING):
        assert warn_if_built_for_another_cpu(model, isa="avx2")
    assert "built for arm64 CPUs, this one is avx2" in caplog.text
    assert not warn_if_built_for_another_cpu(model, isa="arm64")


def test_benchmark_machine_info_names_the_isa() -> None:
    from edgetl.diagnostics.machine import machine_info

    info = machine_info(None)
    assert info["cpu_isa"] == cpu_isa() and isinstance(info["cpu_isa_flags"], list)
