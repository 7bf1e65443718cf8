"""Every decision about how TensorRT is called, tested without TensorRT."""

import argparse
import shlex
import shutil
import subprocess

import pytest

from edgetl.contracts.engine_sidecar import DeviceInfo, rebuild_hint, sidecar_problems
from edgetl.errors import ConfigError
from edgetl.trt.plan import (
    TRT_RELEASE_NAMES,
    BatchProfile,
    EnginePlan,
    build_script,
    builder_flags,
    describe_parser_error,
    make_sidecar,
    onnx_for_precision,
    onnx_versions,
    plan_engine,
    polygraphy_command,
    resolve_trt_release,
    trtexec_command,
)

SHAPE = (-1, 3, 224, 224)


@pytest.mark.parametrize(
    "given, row",
    [
        ("8.5", "8.5"),
        ("8.5.2.2", "8.5"),
        ("8.6.2.3", "8.6"),
        ("10.3.0.30", "10.3"),
        ("10.0", "10.3"),
        ("10", "10.3"),
        ("10.8.0", "10.x"),
        ("10.x", "10.x"),
        ("11.4.1", "11.x"),
        ("11", "11.x"),
        ("11.x", "11.x"),
    ],
)
def test_resolve_target_maps_versions_to_rows(given, row):
    assert resolve_trt_release(given).name == row


@pytest.mark.parametrize(
    "given, message",
    [
        ("8", "ambiguous"),
        ("8.4", "not supported"),
        ("7.1.3", "not supported"),
        ("9.0", "not supported"),
        ("12.0", "not supported"),
        ("jetpack", "must be a TensorRT version"),
    ],
)
def test_resolve_target_rejects_unknown_versions(given, message):
    with pytest.raises(ConfigError, match=message):
        resolve_trt_release(given)


def test_onnx_versions_follow_the_parser_of_each_target():
    assert onnx_versions(resolve_trt_release("8.5"), 17) == (17, 8)
    assert onnx_versions(resolve_trt_release("8.6"), 13) == (13, 7)
    assert onnx_versions(resolve_trt_release("10.3"), 20) == (20, 9)
    assert onnx_versions(resolve_trt_release("11.x"), 22) == (22, 10)
    with pytest.raises(ConfigError, match="opset <= 22"):  # 11.0/11.1 do not parse opset 24 (11.2 does)
        onnx_versions(resolve_trt_release("11.x"), 24)
    with pytest.raises(ConfigError, match="opset <= 17"):
        onnx_versions(resolve_trt_release("8.6"), 18)
    with pytest.raises(ConfigError, match="opset <= 20"):
        onnx_versions(resolve_trt_release("10.3"), 21)


@pytest.mark.parametrize(
    "target, precision, flags, onnx",
    [
        ("8.5", "fp32", (), "model.onnx"),
        ("8.5", "fp16", ("FP16",), "model.onnx"),
        ("8.6", "int8", ("INT8", "FP16"), "model_int8.onnx"),
        ("10.3", "fp16", ("FP16",), "model.onnx"),
        ("10.x", "int8", ("INT8", "FP16"), "model_int8.onnx"),
        # TensorRT 11 is strongly typed: no precision flags; fp16 comes from an fp16 ONNX, int8 from Q/DQ.
        ("11.x", "fp16", (), "model_fp16.onnx"),
        ("11.x", "int8", (), "model_int8.onnx"),
        ("11.x", "fp32", (), "model.onnx"),
    ],
)
def test_builder_flags_and_source_onnx_per_target(target, precision, flags, onnx):
    row = resolve_trt_release(target)
    assert builder_flags(row, precision) == flags
    assert onnx_for_precision(row, precision) == onnx


def test_explicit_batch_network_flag_only_before_tensorrt_10():
    for name, expected in (("8.5", ("EXPLICIT_BATCH",)), ("8.6", ("EXPLICIT_BATCH",)), ("10.3", ()), ("11.x", ())):
        assert plan_engine(resolve_trt_release(name), "fp32", "input", "logits", SHAPE).network_flags == expected


def test_profile_shapes_dynamic_default_and_custom():
    plan = plan_engine(resolve_trt_release("10.3"), "fp16", "input", "logits", SHAPE)
    assert plan.shapes() == {"min": (1, 3, 224, 224), "opt": (1, 3, 224, 224), "max": (8, 3, 224, 224)}
    plan = plan_engine(resolve_trt_release("10.3"), "fp16", "input", "logits", SHAPE, BatchProfile(2, 4, 16))
    assert plan.shapes()["opt"] == (4, 3, 224, 224) and plan.shapes()["max"] == (16, 3, 224, 224)


def test_static_batch_has_no_profile_and_rejects_a_range():
    row = resolve_trt_release("8.6")
    assert plan_engine(row, "fp32", "input", "logits", (4, 3, 224, 224)).shapes() == {}
    assert plan_engine(row, "fp32", "input", "logits", (4, 3, 224, 224), BatchProfile(4, 4, 4)).profile is None
    with pytest.raises(ConfigError, match="static batch of 4"):
        plan_engine(row, "fp32", "input", "logits", (4, 3, 224, 224), BatchProfile(1, 4, 8))


@pytest.mark.parametrize("low, opt, high", [(0, 1, 1), (2, 1, 4), (1, 8, 4)])
def test_batch_profile_validation(low, opt, high):
    with pytest.raises(ConfigError, match="min-batch"):
        BatchProfile(low, opt, high)


def test_plan_rejects_names_trtexec_cannot_take_and_bad_workspace():
    with pytest.raises(ConfigError, match="tensor name"):
        plan_engine(resolve_trt_release("10.3"), "fp32", "input:0", "logits", SHAPE)
    with pytest.raises(ConfigError, match="workspace"):
        plan_engine(resolve_trt_release("10.3"), "fp32", "input", "logits", SHAPE, workspace_mib=0)


def test_trtexec_command_jetpack6_fp16_dynamic():
    plan = plan_engine(
        resolve_trt_release("8.6"), "fp16", "input_0", "output_0", SHAPE, BatchProfile(1, 2, 4), 2048, "timing.cache"
    )
    assert trtexec_command(plan) == [
        "trtexec",
        "--onnx=model.onnx",
        "--saveEngine=model_fp16.engine",
        "--fp16",
        "--minShapes=input_0:1x3x224x224",
        "--optShapes=input_0:2x3x224x224",
        "--maxShapes=input_0:4x3x224x224",
        "--memPoolSize=workspace:2048",
        "--timingCacheFile=timing.cache",
        "--skipInference",
    ]


def test_trtexec_command_int8_and_tensorrt11():
    int8 = trtexec_command(plan_engine(resolve_trt_release("10.3"), "int8", "input", "logits", (1, 3, 224, 224)))
    assert int8[:5] == ["trtexec", "--onnx=model_int8.onnx", "--saveEngine=model_int8.engine", "--int8", "--fp16"]
    assert not any(a.startswith("--minShapes") for a in int8)  # static batch: no profile
    fp16_11 = trtexec_command(plan_engine(resolve_trt_release("11.x"), "fp16", "input", "logits", SHAPE))
    assert "--onnx=model_fp16.onnx" in fp16_11
    assert not {"--fp16", "--int8", "--best"} & set(fp16_11)  # removed in TensorRT 11
    for args in (int8, fp16_11):  # flags removed in TensorRT 10 never appear
        assert not any(a.startswith(("--workspace=", "--explicitBatch", "--buildOnly")) for a in args)


def test_build_script_is_valid_shell_with_the_same_command(tmp_path):
    plan = plan_engine(resolve_trt_release("10.3"), "fp16", "input", "logits", SHAPE)
    script = build_script([plan], resolve_trt_release("10.3"))
    assert script.startswith("#!/bin/sh\n")
    assert all(arg in script for arg in trtexec_command(plan)[1:])
    assert "-m edgetl.trt.build --sidecar model_fp16.engine" in script
    assert "/usr/src/tensorrt/bin/trtexec" in script
    path = tmp_path / "build_engine.sh"
    path.write_text(script)
    shell = shutil.which("sh")
    if shell:
        assert subprocess.run([shell, "-n", str(path)]).returncode == 0


def test_polygraphy_command_matches_the_plan():
    int8 = plan_engine(resolve_trt_release("10.3"), "int8", "input", "logits", SHAPE)
    assert polygraphy_command(int8, 0.75) == [
        "polygraphy", "run", "model_int8.onnx", "--trt", "--onnxrt", "--int8", "--fp16", "--tf32",
        "--data-loader-script", "verify_data.py", "--atol", "0.75", "--rtol", "0",
    ]  # fmt: skip
    strongly_typed = plan_engine(resolve_trt_release("11.x"), "fp16", "input", "logits", SHAPE)
    assert polygraphy_command(strongly_typed, 0.1)[2:6] == ["model_fp16.onnx", "--trt", "--onnxrt", "--tf32"]


FALLBACK_LAYER = "/features/features.1/conv/conv.0/conv.0.0/Conv"  # torch's ONNX node names: slashes and dots


def _every_plan():
    """GPU plans of every target and precision (INT8 with a layer the fallback kept in fp32), and DLA plans."""
    for name in TRT_RELEASE_NAMES:
        target = resolve_trt_release(name)
        for precision in ("fp32", "fp16", "int8"):
            yield plan_engine(target, precision, "input", "logits", SHAPE, fp32_layers=(FALLBACK_LAYER,))
            if target.dla and precision != "fp32":
                yield plan_engine(target, precision, "input", "logits", (1, 3, 224, 224), dla_core=1)


def _polygraphy_lines(script: str):
    """The Polygraphy commands build_engine.sh prints for devices without edgetl, as argument lists."""
    for line in script.splitlines():
        words = shlex.split(line) if line.strip().startswith("echo ") else []
        if len(words) > 1 and words[1].strip().startswith("polygraphy "):
            yield shlex.split(words[1])


def test_every_generated_polygraphy_line_parses_with_polygraphys_own_parser():
    from polygraphy.tools.args import TrtConfigArgs, TrtLoadNetworkArgs
    from polygraphy.tools.registry import TOOL_REGISTRY

    parser = argparse.ArgumentParser()
    tools = parser.add_subparsers(dest="tools")
    for tool in TOOL_REGISTRY:
        tool.setup_parser(tools)
    checked = 0
    for plan in _every_plan():
        [command] = list(_polygraphy_lines(build_script([plan], resolve_trt_release(plan.target), reference_scale=4.0)))
        assert command[:2] == ["polygraphy", "run"]
        args, unknown = parser.parse_known_args(command[1:])
        assert not unknown, "{} ({}): Polygraphy rejects {}".format(plan.engine, plan.target, unknown)
        args.subcommand.parse(args)
        config = args.subcommand.arg_groups[TrtConfigArgs]
        network = args.subcommand.arg_groups[TrtLoadNetworkArgs]
        assert (bool(config.fp16), bool(config.int8)) == ("FP16" in plan.builder_flags, "INT8" in plan.builder_flags)
        assert bool(config.use_dla) == bool(config.allow_gpu_fallback) == (plan.dla_core is not None)
        assert config.calibration_cache == plan.calibration_cache
        assert sorted(network.layer_precisions or {}) == sorted(plan.fp32_layers)
        assert config.precision_constraints == ("obey" if plan.fp32_layers else None)
        checked += 1
    assert checked == 21  # 5 targets x 3 precisions + 3 DLA targets x 2


def test_int8_fallback_layers_are_pinned_to_fp32_where_the_fp16_flag_could_move_them():
    layers = (FALLBACK_LAYER, "/classifier/classifier.1/Gemm")
    int8 = plan_engine(resolve_trt_release("10.3"), "int8", "input", "logits", SHAPE, fp32_layers=layers)
    assert int8.fp32_layers == layers and "FP16" in int8.builder_flags
    assert trtexec_command(int8)[-7:-5] == [
        "--precisionConstraints=obey",
        "--layerPrecisions={}:fp32,/classifier/classifier.1/Gemm:fp32".format(FALLBACK_LAYER),
    ]
    assert EnginePlan.from_dict(int8.to_dict()) == int8
    for target, precision, dla in (("11.x", "int8", None), ("10.3", "fp16", None), ("10.3", "int8", 0)):
        row, shape = resolve_trt_release(target), (1, 3, 224, 224)
        plan = plan_engine(row, precision, "input", "logits", shape, dla_core=dla, fp32_layers=layers)
        assert plan.fp32_layers == () and not any("Precision" in a for a in trtexec_command(plan))
    with pytest.raises(ConfigError, match="cannot be passed to trtexec --layerPrecisions"):
        plan_engine(resolve_trt_release("10.3"), "int8", "input", "logits", SHAPE, fp32_layers=("a,b",))


def _run_script(tmp_path, python: str, script: str):
    """Run build_engine.sh with a stand-in trtexec (it writes the engine file) and a stand-in PYTHON."""
    (tmp_path / "build_engine.sh").write_text(script)
    trtexec = tmp_path / "trtexec"
    trtexec.write_text(
        '#!/bin/sh\nfor a in "$@"; do case "$a" in --saveEngine=*) echo engine > "${a#*=}";; esac; done\n'
    )
    stand_in = tmp_path / "python"
    stand_in.write_text(python)
    for path in (trtexec, stand_in):
        path.chmod(0o755)
    env = {"PATH": "/usr/bin:/bin", "TRTEXEC": str(trtexec), "PYTHON": str(stand_in)}
    return subprocess.run(["sh", str(tmp_path / "build_engine.sh")], env=env, capture_output=True, text=True)


@pytest.mark.skipif(shutil.which("sh") is None, reason="no POSIX shell")
def test_build_script_verifies_or_prints_the_polygraphy_check(tmp_path):
    plan = plan_engine(resolve_trt_release("10.3"), "fp16", "input", "logits", SHAPE)
    script = build_script([plan], resolve_trt_release("10.3"), reference_scale=8.0)
    assert "-m edgetl verify . --only model_fp16.engine" in script
    # without edgetl: not verified, and the equivalent Polygraphy command (fp16 tolerance x the sample's scale)
    without = _run_script(tmp_path, "#!/bin/sh\nexit 1\n", script)
    assert without.returncode == 0, without.stderr
    assert "model_fp16.engine is not verified" in without.stderr
    assert "polygraphy run model.onnx --trt --onnxrt --fp16 --tf32 --data-loader-script verify_data.py --atol 0.4" in (
        without.stderr
    )
    # with edgetl: a failing check (exit 3) moves the engine and its sidecar aside and stops with 3
    failing = '#!/bin/sh\ncase "$2" in edgetl.trt.build) echo {} > model_fp16.engine.json;; edgetl) exit 3;; esac\n'
    rejected = _run_script(tmp_path, failing, script)
    assert rejected.returncode == 3 and "failed verification: moved to model_fp16.engine.rejected" in rejected.stderr
    assert not (tmp_path / "model_fp16.engine").exists() and (tmp_path / "model_fp16.engine.rejected").is_file()
    assert (tmp_path / "model_fp16.engine.rejected.json").is_file()
    passing = _run_script(tmp_path, "#!/bin/sh\nexit 0\n", script)
    assert passing.returncode == 0 and (tmp_path / "model_fp16.engine").is_file()
    unsampled = build_script([plan], resolve_trt_release("10.3"))
    assert "no verification sample" in unsampled and "edgetl verify" not in unsampled


def test_engine_plan_round_trips_through_json_dict():
    plan = plan_engine(resolve_trt_release("8.5"), "int8", "input", "logits", SHAPE, BatchProfile(1, 2, 4))
    assert EnginePlan.from_dict(plan.to_dict()) == plan


DEVICE = DeviceInfo("10.3.0.30", "Orin", "8.7")


def _sidecar(**changes):
    plan = plan_engine(resolve_trt_release("10.3"), "fp16", "input", "logits", SHAPE)
    sidecar = make_sidecar(plan, DEVICE, onnx_sha256="onnx-sha", engine_sha256="engine-sha", built_with="test")
    sidecar.update(changes)
    return sidecar


def test_sidecar_records_what_engines_depend_on():
    sidecar = _sidecar()
    assert sidecar["tensorrt_version"] == "10.3.0.30" and sidecar["compute_capability"] == "8.7"
    assert sidecar["gpu_name"] == "Orin" and sidecar["precision"] == "fp16" and sidecar["onnx_sha256"] == "onnx-sha"
    assert sidecar["profile_shapes"]["max"] == [8, 3, 224, 224]
    assert sidecar_problems(sidecar, DEVICE, "engine-sha", "onnx-sha") == []


def test_sidecar_compatibility_refusals():
    assert "no sidecar" in sidecar_problems(None, DEVICE, "engine-sha", None)[0]
    assert "not an edgetl engine sidecar" in sidecar_problems({"format": "x"}, DEVICE, "engine-sha", None)[0]
    other_trt = sidecar_problems(_sidecar(tensorrt_version="8.6.2.3"), DEVICE, "engine-sha", "onnx-sha")
    assert other_trt == ["it was built with TensorRT 8.6.2.3, this device runs TensorRT 10.3.0.30"]
    other_gpu = sidecar_problems(_sidecar(gpu_name="Xavier", compute_capability="7.2"), DEVICE, "engine-sha", None)
    assert len(other_gpu) == 1 and "compute capability 7.2" in other_gpu[0] and "8.7" in other_gpu[0]
    assert "engine file changed" in sidecar_problems(_sidecar(), DEVICE, "other", None)[0]
    assert "older model.onnx" in sidecar_problems(_sidecar(), DEVICE, "engine-sha", "new-onnx-sha")[0]
    # the same SM under another product name is compatible
    assert sidecar_problems(_sidecar(gpu_name="Orin (nvgpu)"), DEVICE, "engine-sha", "onnx-sha") == []


def test_rebuild_hint_names_both_ways_to_rebuild():
    hint = rebuild_hint("int8")
    assert "build_engine.sh" in hint and "edgetl build-engine BUNDLE --precision int8" in hint


class _ParserError8:
    """The TensorRT 8.x ParserError interface: code/desc/node only."""

    def code(self):
        return "ErrorCode.UNSUPPORTED_NODE"

    def desc(self):
        return "No importer registered for op: Foo"

    def node(self):
        return 12


class _ParserError10(_ParserError8):
    """TensorRT >= 9.1 adds the node name and operator."""

    def node_name(self):
        return "/head/Foo"

    def node_operator(self):
        return "Foo"


def test_parser_errors_name_the_failing_node():
    assert describe_parser_error(_ParserError8()) == "node 12: UNSUPPORTED_NODE: No importer registered for op: Foo"
    assert describe_parser_error(_ParserError10()).startswith("node 12 (/head/Foo, Foo): UNSUPPORTED_NODE")
