"""``edgetl doctor``: each mapping (L4T -> JetPack -> TensorRT -> --trt-version, nvpmodel, jetson_clocks, packages,
execution providers, torch, bundles) from injected facts, so none of it needs a Jetson or a GPU."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest
from click.testing import CliRunner

from edgetl.contracts.bundle import ModelInfo
from edgetl.contracts.engine_sidecar import SIDECAR_FORMAT, DeviceInfo
from edgetl.diagnostics import doctor as d
from edgetl.diagnostics import jetson as j
from edgetl.diagnostics.machine import machine_info
from edgetl.trt.plan import DEFAULT_TRT_RELEASE, TRT_RELEASES


@pytest.mark.parametrize(
    "text, expected",
    [
        ("# R36 (release), REVISION: 3.0, GCID: 36191598, BOARD: generic, EABI: aarch64, DATE: Mon May  6", (36, 3, 0)),
        ("# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64", (35, 4, 1)),
        ("# R32 (release), REVISION: 7.1, GCID: 29818004, BOARD: t210ref", (32, 7, 1)),
        ("# R36 (release), REVISION: 4", (36, 4, 0)),
        ("garbage", None),
        ("", None),
    ],
)
def test_parse_nv_tegra_release(text, expected):
    assert j.parse_nv_tegra_release(text) == expected


@pytest.mark.parametrize(
    "version, expected",
    [("36.3.0-20240506102626", (36, 3, 0)), ("35.4.1-20230801124926", (35, 4, 1)), ("36.4", (36, 4, 0)), ("", None)],
)
def test_parse_l4t_core_version(version, expected):
    assert j.parse_l4t_core_version(version) == expected


@pytest.mark.parametrize(
    "l4t, jetpack, trt, target",
    [
        ((35, 4, 1), "5.1.x", "8.5", "8.5"),
        ((35, 2, 1), "5.1.x", "8.5", "8.5"),
        ((35, 1, 0), "5.0.2", "8.4", None),
        ((36, 2, 0), "6.0 DP", "8.6", "8.6"),
        ((36, 3, 0), "6.0", "8.6", "8.6"),
        ((36, 4, 0), "6.1/6.2", "10.3", "10.3"),
        ((36, 4, 3), "6.1/6.2", "10.3", "10.3"),
        ((32, 7, 1), "4.x", "", None),
    ],
)
def test_jetpack_table_maps_l4t_to_tensorrt_and_target(l4t, jetpack, trt, target):
    row = j.jetpack_for_l4t(l4t)
    assert (row.jetpack, row.tensorrt) == (jetpack, trt)
    found = d.release_for_tensorrt(row.tensorrt) if row.tensorrt else None
    assert (found.name if found else None) == target


def test_every_jetpack_tensorrt_with_a_target_names_an_existing_row():
    names = {t.name for t in TRT_RELEASES}
    for row in j.JETPACK_RELEASES:
        target = d.release_for_tensorrt(row.tensorrt) if row.tensorrt else None
        assert target is None or target.name in names
    assert j.jetpack_for_l4t((37, 0, 0)) is None  # unknown releases are reported, never guessed


def test_default_target_is_jetpack_6_1_not_6_0():
    """The default --trt-version (10.3) is JetPack 6.1/6.2's TensorRT; JetPack 6.0 ships 8.6."""
    assert DEFAULT_TRT_RELEASE == "10.3"
    assert j.jetpack_for_l4t((36, 3)).tensorrt == "8.6"
    assert j.jetpack_for_l4t((36, 4)).tensorrt == DEFAULT_TRT_RELEASE


@pytest.mark.parametrize(
    "text, expected",
    [
        ("NV Power Mode: MAXN\n0\n", {"name": "MAXN", "id": 0}),
        ("NVPM WARN: fan mode is not set!\nNV Power Mode: 15W\n2\n", {"name": "15W", "id": 2}),
        ("NV Power Mode: 7W", {"name": "7W", "id": None}),
        ("nothing", None),
    ],
)
def test_parse_nvpmodel(text, expected):
    assert j.parse_nvpmodel(text) == expected


ACTIVE = """SOC family:tegra234  Machine:NVIDIA Jetson AGX Orin Developer Kit
cpu0: Online=1 Governor=schedutil MinFreq=2201600 MaxFreq=2201600 CurrentFreq=2201600 IdleStates: WFI=0 c7=0
GPU MinFreq=1300500000 MaxFreq=1300500000 CurrentFreq=1300500000
EMC MinFreq=204000000 MaxFreq=3199000000 CurrentFreq=3199000000 FreqOverride=1
"""


def test_parse_jetson_clocks():
    assert j.parse_jetson_clocks(ACTIVE.replace("MinFreq=204000000", "MinFreq=3199000000")) is True
    assert j.parse_jetson_clocks(ACTIVE.replace("MinFreq=2201600", "MinFreq=729600")) is False
    assert j.parse_jetson_clocks("") is None


# Real `jetson_clocks.sh --show` on a Jetson TX1 (L4T 28.1) after jetson_clocks: the EMC is locked at its
# maximum with MinFreq < MaxFreq and FreqOverride=1. Source: github.com/hordiales/jetson-tx1-dev, SCRIPTS.md
# (commit a5a5cc70a6f40a0452cb59814fde50ae28cd12cd), quoted as published (its indentation removed).
TX1_LOCKED = """SOC family:tegra210  Machine:jetson_tx1
Online CPUs: 0-3
CPU Cluster Switching: Disabled
cpu0: Gonvernor=interactive MinFreq=1734000 MaxFreq=1734000 CurrentFreq=1734000
cpu1: Gonvernor=interactive MinFreq=1734000 MaxFreq=1734000 CurrentFreq=1734000
cpu2: Gonvernor=interactive MinFreq=1734000 MaxFreq=1734000 CurrentFreq=1734000
cpu3: Gonvernor=interactive MinFreq=1734000 MaxFreq=1734000 CurrentFreq=1734000
GPU MinFreq=998400000 MaxFreq=998400000 CurrentFreq=998400000
EMC MinFreq=12750000 MaxFreq=1600000000 CurrentFreq=1600000000 FreqOverride=1
Fan: speed=255
"""

# Real DLA and PVA lines of `jetson_clocks --show` (MinFreq=0 at full clock), as quoted in jetson-stats'
# parser: github.com/rbonghi/jetson_stats, jtop/core/jetson_clocks.py (commit
# f0113fd0b548a9973fe6e13968fa118a62aad25c), comment lines above DLA_REGEXP and PVA_REGEXP.
DLA_PVA_LINES = """DLA0_CORE MinFreq=0 MaxFreq=1600000000 CurrentFreq=1600000000
DLA0_FALCON MinFreq=0 MaxFreq=844800000 CurrentFreq=844800000
DLA1_CORE MinFreq=0 MaxFreq=1600000000 CurrentFreq=1600000000
DLA1_FALCON MinFreq=0 MaxFreq=844800000 CurrentFreq=844800000
PVA0_VPS0 MinFreq=0 MaxFreq=1152000000 CurrentFreq=1152000000
PVA0_AXI MinFreq=0 MaxFreq=832000000 CurrentFreq=832000000
"""


def test_a_locked_emc_reads_from_freqoverride():
    assert j.parse_jetson_clocks(TX1_LOCKED) is True
    assert j.parse_jetson_clocks(TX1_LOCKED.replace("FreqOverride=1", "FreqOverride=0")) is False
    assert j.parse_jetson_clocks(TX1_LOCKED.replace("MinFreq=998400000", "MinFreq=76800000")) is False


def test_dla_and_pva_clocks_are_not_judged():
    """Only CPU, GPU and EMC lines decide; DLA/PVA lines alone leave nothing to judge."""
    assert j.parse_jetson_clocks(DLA_PVA_LINES) is None
    assert j.parse_jetson_clocks(TX1_LOCKED + DLA_PVA_LINES) is True


def facts(**over: Any) -> Dict[str, Any]:
    base: Dict[str, Any] = {
        "python": [3, 10, 12],
        "machine": "aarch64",
        "edgetl": "0.1.0",
        "edgetl_path": "/x/edgetl",
        "packages": {"numpy": "1.26.4", "onnx": "1.16.0", "onnxruntime-gpu": "1.18.0", "cuda-python": "12.6.0"},
        "onnxruntime": {
            "version": "1.18.0",
            "available": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
            "runs": {
                "TensorrtExecutionProvider": {"runs_on": "CPUExecutionProvider", "correct": True, "error": "no libs"},
                "CUDAExecutionProvider": {"runs_on": "CUDAExecutionProvider", "correct": True, "error": None},
                "CPUExecutionProvider": {"runs_on": "CPUExecutionProvider", "correct": True, "error": None},
            },
        },
        "torch": None,
        "tensorrt": {"version": "10.3.0.30", "device": None, "device_error": "no GPU"},
        "jetson": {
            "nv_tegra_release": "# R36 (release), REVISION: 4.0, GCID: 1",
            "l4t_core": None,
            "nvpmodel": {"rc": 0, "output": "NV Power Mode: MAXN\n0\n"},
            "jetson_clocks": {"rc": 0, "output": ACTIVE},
        },
    }
    base.update(over)
    return base


def by_name(items: List[d.Item]) -> Dict[str, d.Item]:
    return {item.name: item for item in items}


def test_a_healthy_jetson_is_not_broken():
    items = by_name(d.diagnose(facts()))
    assert not d.is_broken(list(items.values()))
    assert items["jetson"].status == d.OK and "JetPack 6.1/6.2" in items["jetson"].detail
    assert "--trt-version 10.3" in items["jetson"].detail
    assert items["power mode"].detail.startswith("MAXN (mode 0); jetson_clocks active")
    assert items["tensorrt"].status == d.OK
    assert items["ORT provider CUDA"].status == d.OK
    tensorrt_ep = items["ORT provider Tensorrt"]  # claimed by get_available_providers(), falls back to the CPU
    assert tensorrt_ep.status == d.MISMATCH and "runs on CPUExecutionProvider" in tensorrt_ep.detail
    assert not tensorrt_ep.broken
    assert items["torch"].status == d.MISSING and "NVIDIA's torch wheel" in items["torch"].advice


def test_both_onnxruntime_distributions_are_flagged_as_broken():
    packages = dict(facts()["packages"], onnxruntime="1.18.0")
    items = d.diagnose(facts(packages=packages))
    item = by_name(items)["onnxruntime"]
    assert item.status == d.MISMATCH and item.broken and "overwrite" in item.advice
    assert d.is_broken(items)


def test_jetpack_4_and_python_3_6_are_unsupported():
    jp4 = dict(facts()["jetson"], nv_tegra_release="# R32 (release), REVISION: 7.1")
    items = by_name(d.diagnose(facts(python=[3, 6, 9], jetson=jp4, tensorrt=None)))
    assert items["python"].broken and "JetPack 4" in items["python"].advice
    assert items["jetson"].broken and "unsupported" in items["jetson"].advice


def test_jetpack_5_0_tensorrt_8_4_has_no_target():
    jp5 = dict(facts()["jetson"], nv_tegra_release="# R35 (release), REVISION: 1.0")
    items = by_name(d.diagnose(facts(jetson=jp5, tensorrt={"version": "8.4.1.5", "device": None})))
    assert items["jetson"].broken and "5.1" in items["jetson"].advice
    assert items["tensorrt"].broken


def test_a_pip_tensorrt_that_is_not_jetpacks_is_a_mismatch():
    jp60 = dict(facts()["jetson"], nv_tegra_release="# R36 (release), REVISION: 3.0")
    items = by_name(d.diagnose(facts(jetson=jp60)))
    assert items["jetson"].detail.startswith("L4T 36.3.0 = JetPack 6.0, TensorRT 8.6")
    assert "--trt-version 8.6" in items["jetson"].detail
    assert items["tensorrt vs JetPack"].status == d.MISMATCH


def test_l4t_from_dpkg_when_the_release_file_is_missing():
    jetson = dict(facts()["jetson"], nv_tegra_release=None, l4t_core="35.4.1-20230801124926")
    summary = d.jetson_summary(jetson)
    assert (summary["l4t"], summary["jetpack"], summary["trt_version"]) == ("35.4.1", "5.1.x", "8.5")


def test_power_mode_tools_absent_or_failing():
    absent = d.jetson_summary(dict(facts()["jetson"], nvpmodel=None, jetson_clocks=None))
    assert absent["power_mode"] is None and not absent["nvpmodel_present"]
    items = by_name(d._jetson_items(absent))
    assert items["power mode"].status == d.MISSING and "nvpmodel not found" in items["power mode"].detail
    failing = d.jetson_summary(dict(facts()["jetson"], nvpmodel={"rc": None, "output": "timed out after 5 s"}))
    assert by_name(d._jetson_items(failing))["power mode"].detail == "timed out after 5 s"


def test_workstation_without_torch_cuda_or_tensorrt():
    ws = facts(
        machine="x86_64",
        jetson=None,
        torch={"version": "2.4.0+cpu", "cuda_build": None, "cuda": False},
        tensorrt=None,
        packages={"numpy": "2.0", "onnx": "1.16", "onnxruntime": "1.18", "torchvision": "0.19"},
        onnxruntime={
            "version": "1.18",
            "available": ["CPUExecutionProvider"],
            "runs": {"CPUExecutionProvider": {"runs_on": "CPUExecutionProvider", "correct": True, "error": None}},
        },
    )
    items = by_name(d.diagnose(ws))
    assert not d.is_broken(list(items.values()))
    assert "jetson" not in items
    assert items["torch"].status == d.OK and "CPU-only build" in items["torch"].detail
    assert items["tensorrt"].status == d.MISSING and items["cuda-python"].status == d.MISSING
    assert items["export onnx/fp16/int8"].status == d.OK
    assert items["predict --backend trt"].detail == "tensorrt is not installed"
    assert items["predict --backend onnx --device cuda"].status == d.MISSING
    assert items["predict --backend ort-trt"].status == d.MISSING


def test_ort_trt_is_offered_only_when_a_session_runs_on_tensorrt():
    """onnxruntime-gpu lists the TensorRT provider everywhere; the capability follows the real session."""
    claimed = {"runs_on": "CPUExecutionProvider", "correct": True, "error": "libnvinfer.so.10: cannot open"}
    cpu = {"runs_on": "CPUExecutionProvider", "correct": True, "error": None}
    ort = {"version": "1.31", "available": ["TensorrtExecutionProvider", "CPUExecutionProvider"]}
    for run, status in ((claimed, d.MISSING), (dict(claimed, runs_on="TensorrtExecutionProvider"), d.OK)):
        runs = {"TensorrtExecutionProvider": run, "CPUExecutionProvider": cpu}
        items = by_name(d.capability_items(facts(onnxruntime=dict(ort, runs=runs))))
        assert items["predict --backend ort-trt"].status == status


def test_torch_with_cuda_reports_the_device():
    torch = {"version": "2.3.0", "cuda_build": "12.2", "cuda": True, "device": "Orin", "capability": "8.7"}
    torch.update(memory_gib=61.4, device_count=1)
    packages = dict(facts()["packages"], torchvision="0.18.0")
    item = by_name(d.diagnose(facts(torch=torch, packages=packages)))["torch"]
    assert item.status == d.OK and "Orin (compute capability 8.7, 61.4 GiB)" in item.detail


def test_missing_core_package_is_broken():
    items = by_name(d.diagnose(facts(packages={"onnx": "1.16", "onnxruntime": "1.18"})))
    assert items["numpy"].status == d.MISSING and items["numpy"].broken


class FakeBundle:
    """What ``bundle_items`` reads from a Bundle."""

    def __init__(self, root: Path, models: Dict[str, ModelInfo], engines: Dict[str, Dict[str, Any]]) -> None:
        self.root, self._models, self._engines = root, models, engines

    def engines(self) -> List[str]:
        return list(self._engines)

    def engine_plan(self, engine: str) -> Optional[Dict[str, Any]]:
        return self._engines.get(engine)

    def model(self, kind: str) -> Optional[ModelInfo]:
        return self._models.get(kind)


def model_info(file: str, kind: str, int8_form: Optional[str] = None) -> ModelInfo:
    return ModelInfo(file, kind, "input", "logits", "NCHW", "logits", None, "0" * 64, int8_form)


@pytest.fixture
def bundle(tmp_path: Path) -> FakeBundle:
    (tmp_path / "model.onnx").write_bytes(b"onnx")
    (tmp_path / "model_int8.onnx").write_bytes(b"int8")
    engine = tmp_path / "model_fp16.engine"
    engine.write_bytes(b"engine")
    sidecar = {
        "format": SIDECAR_FORMAT,
        "engine": engine.name,
        "engine_sha256": d.sha256_file(engine),
        "tensorrt_version": "10.3.0.30",
        "gpu_name": "Orin",
        "compute_capability": "8.7",
        "onnx": "model.onnx",
        "onnx_sha256": d.sha256_file(tmp_path / "model.onnx"),
    }
    (tmp_path / "model_fp16.engine.json").write_text(json.dumps(sidecar))
    models = {"fp32": model_info("model.onnx", "fp32"), "int8": model_info("model_int8.onnx", "int8", "cpu")}
    return FakeBundle(tmp_path, models, {engine.name: {"precision": "fp16", "onnx": "model.onnx"}})


def test_bundle_engine_built_here_fits(bundle):
    items = d.bundle_items(bundle, DeviceInfo("10.3.0.30", "Orin", "8.7"), "10.3.0.30", read_onnx=lambda p: (17, 8))
    named = by_name(items)
    assert named["bundle engine model_fp16.engine"].status == d.OK
    assert (
        named["bundle model.onnx"].status == d.OK
        and "TensorRT 10.3 (the TensorRT here)" in named["bundle model.onnx"].detail
    )
    assert "bundle model_int8.onnx" not in named  # the CPU INT8 form is never built by TensorRT
    assert not d.is_broken(items)


def test_bundle_engine_from_another_device_or_version_is_broken(bundle):
    items = d.bundle_items(bundle, DeviceInfo("8.6.2.3", "Xavier", "7.2"), "8.6.2.3", read_onnx=lambda p: (17, 8))
    engine = by_name(items)["bundle engine model_fp16.engine"]
    assert engine.status == d.MISMATCH and engine.broken
    assert "TensorRT 10.3.0.30" in engine.detail and "compute capability 8.7" in engine.detail
    assert "build_engine.sh" in engine.advice


def test_bundle_onnx_too_new_for_the_jetpack_tensorrt(bundle):
    items = d.bundle_items(bundle, None, None, "tensorrt is not installed", "8.5", read_onnx=lambda p: (20, 9))
    named = by_name(items)
    assert named["bundle engine model_fp16.engine"].status == d.MISSING
    onnx = named["bundle model.onnx"]
    assert onnx.status == d.MISMATCH and onnx.broken and "this JetPack's TensorRT" in onnx.detail
    assert onnx.advice == "re-export with --trt-version 8.5"


def test_bundle_without_any_tensorrt_uses_the_default_target(bundle):
    named = by_name(d.bundle_items(bundle, None, None, read_onnx=lambda p: (17, 8)))
    assert "default --trt-version" in named["bundle model.onnx"].detail


def test_format_and_json():
    items = [d.Item("a", d.OK, "fine"), d.Item("b", d.MISMATCH, "bad", "fix it", broken=True)]
    text = d.format_items(items)
    assert "-> fix it" in text and text.endswith("something edgetl needs is broken (exit 1)")
    assert json.loads(d.report_json(items, {"x": 1}))["broken"] is True


def test_probe_onnxruntime_opens_real_sessions():
    """On this machine: the CPU provider runs; any other claimed provider is tested, not trusted."""
    ort = d.probe_onnxruntime()
    assert ort["runs"]["CPUExecutionProvider"] == {"runs_on": "CPUExecutionProvider", "correct": True, "error": None}
    for provider, run in ort["runs"].items():
        assert run["runs_on"] in (None,) + tuple(ort["available"])


def test_machine_info_has_no_jetson_key_off_a_jetson():
    if j.NV_TEGRA_RELEASE.is_file():
        pytest.skip("this is a Jetson")
    assert "jetson" not in machine_info(None)


def test_cli_doctor_runs_and_exits_zero_here():
    from edgetl.cli import main

    result = CliRunner().invoke(main, ["doctor", "--json"])
    report = json.loads(result.output)
    assert result.exit_code == (1 if report["broken"] else 0)
    names = [item["name"] for item in report["items"]]
    assert {"python", "numpy", "onnx", "onnxruntime", "torch", "tensorrt"} <= set(names)
    assert any(name.startswith("predict --backend") for name in names)
