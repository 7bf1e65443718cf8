"""Contract checks of how edgetl calls TensorRT and trtexec, without TensorRT: each supported version's
trtexec options, and edgetl's runner/builder driven through the fakes in ``fake_trt`` (never figures)."""

import json
import shlex
from pathlib import Path

import fake_trt
import numpy as np
import pytest
from click.testing import CliRunner

from edgetl.contracts.engine_sidecar import DeviceInfo
from edgetl.core.fileio import sha256_file
from edgetl.errors import ConfigError, DependencyError, GateError
from edgetl.trt.plan import (
    TRT_RELEASE_NAMES,
    BatchProfile,
    build_script,
    make_sidecar,
    plan_engine,
    resolve_trt_release,
)

# trtexec's documented options ("  --name" lines of its help text) per release, from NVIDIA/TensorRT
# samples/common/sampleOptions.cpp on branches release/8.5 (68b5072f), 8.6 (a0215c1a), 10.0 (ccf11997),
# 10.3 (5b990f0a), 10.8 (64e56ab6), 10.16 (d0faf303), 11.0 (93842ac9), 11.1 (90536162). Each release is
# written as the one before it, minus and plus what its help text dropped and added.
_TRTEXEC_8_5 = set(
    """allowGPUFallback avgRuns avgTiming batch best buildOnly calib consistency device directIO
    dumpLayerInfo dumpOutput dumpProfile dumpRefit duration exportLayerInfo exportOutput exportProfile exportTimes
    exposeDMA fp16 help heuristic idleTime inputIOFormats int8 iterations layerOutputTypes layerPrecisions loadEngine
    loadInputs maxBatch maxShapes maxShapesCalib memPoolSize minShapes minShapesCalib minTiming model noBuilderCache
    noDataTransfers noTF32 onnx optShapes optShapesCalib output outputIOFormats percentile persistentCacheRatio plugins
    precisionConstraints preview profilingVerbosity refit restricted safe saveEngine separateProfileRun serialized
    shapes sleepTime sparsity std streams tacticSources threads timeDeserialize timeRefit timingCacheFile uffNHWC
    useCudaGraph useDLACore useManagedMemory useSpinWait verbose warmUp workspace""".split()
)
_CHANGES = [  # (release, removed, added)
    (
        "8.6",
        "buildOnly plugins streams",
        "buildDLAStandalone builderOptimizationLevel dumpRawBindingsToFile "
        "dynamicPlugins excludeLeanRuntime fp8 hardwareCompatibilityLevel ignoreParsedPluginLibs infStreams "
        "layerDeviceTypes leanDLLPath maxAuxStreams nativeInstanceNorm setPluginsToSerialize skipInference "
        "staticPlugins "
        "tempdir tempfileControls versionCompatible",
    ),
    (
        "10.0",
        "batch heuristic maxBatch minTiming model nativeInstanceNorm output uffNHWC workspace",
        "allocationStrategy allowWeightStreaming bf16 calibProfile dumpOptimizationProfile errorOnTimingCacheMiss "
        "getPlanVersionOnly markDebug noCompilationCache pluginInstanceNorm profile saveDebugTensors stripWeights "
        "stronglyTyped useProfile weightStreamingBudget weightless",
    ),
    ("10.3", "", "int4 runtimePlatform stripAllWeights"),
    ("10.8", "consistency", "asyncFileReader l2LimitForTiling maxTactics monitorMemory tilingOptimizationLevel"),
    (
        "10.16",
        "useDLACore",
        "adjustForDLA consistency cpuOnly decomposableAttentions dumpKernelText "
        "enablePluginOverride markUnfusedTensorsAsDebugTensors refitFromOnnx remoteAutoTuningConfig "
        "reportCapabilityDLA "
        "safetyPlugins saveAllDebugTensors uint8AsymmetricQuantizationDLA",
    ),
    (
        "11.0",
        "best bf16 calib calibProfile fp16 fp8 int4 layerOutputTypes layerPrecisions maxShapesCalib "
        "minShapesCalib optShapesCalib precisionConstraints restricted weightless",
        "includeDataTransfers noCudaGraph noSpinWait",
    ),
    (
        "11.1",
        "",
        "accuracyAlgorithm accuracyThreshold atol continue dryRun helpBuildRoute loadRefOutputs refPair rtol "
        "saveAllEngines setBuildRoute tuneBuildRouteFile tuneBuildRoutes tuningCacheFile tuningSearch tuningTimeOut",
    ),
]
TRTEXEC_OPTIONS = {"8.5": _TRTEXEC_8_5}
for _release, _removed, _added in _CHANGES:
    TRTEXEC_OPTIONS[_release] = (list(TRTEXEC_OPTIONS.values())[-1] - set(_removed.split())) | set(_added.split())
# the releases each target row covers (its lowest and newest that the table has)
ROW_RELEASES = {
    "8.5": ("8.5",),
    "8.6": ("8.6",),
    "10.3": ("10.0", "10.3"),
    "10.x": ("10.8", "10.16"),
    "11.x": ("11.0", "11.1"),
}


def _trtexec_options(script: str):
    """The option names of every trtexec call in a build_engine.sh."""
    for line in script.replace("\\\n", " ").splitlines():
        words = shlex.split(line) if line.startswith('"$TRTEXEC"') else []
        yield from (w[2:].split("=")[0] for w in words[1:])


def test_the_table_covers_every_target():
    assert set(ROW_RELEASES) == set(TRT_RELEASE_NAMES)


@pytest.mark.parametrize("target", TRT_RELEASE_NAMES)
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
@pytest.mark.parametrize("shape, profile", [((-1, 3, 224, 224), BatchProfile(1, 2, 8)), ((1, 3, 224, 224), None)])
def test_build_engine_sh_uses_only_options_each_trtexec_knows(target, precision, shape, profile):
    row = resolve_trt_release(target)
    plan = plan_engine(
        row, precision, "input", "logits", shape, profile, timing_cache="timing.cache", fp32_layers=("/f.1/Conv",)
    )
    options = list(_trtexec_options(build_script([plan], row)))
    assert "onnx" in options and "saveEngine" in options
    for release in ROW_RELEASES[target]:
        unknown = [o for o in options if o not in TRTEXEC_OPTIONS[release]]
        assert not unknown, "trtexec {} does not know --{}".format(release, ", --".join(unknown))


@pytest.mark.parametrize("target", [t for t in TRT_RELEASE_NAMES if resolve_trt_release(t).dla])
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_dla_build_lines_use_only_options_each_trtexec_knows(target, precision):
    row = resolve_trt_release(target)
    dla = plan_engine(row, precision, "input", "logits", (1, 3, 224, 224), dla_core=0)
    gpu = plan_engine(row, precision, "input", "logits", (-1, 3, 224, 224), BatchProfile(1, 1, 8), also_write=("x/y",))
    options = list(_trtexec_options(build_script([dla, gpu], row)))
    assert {"useDLACore", "allowGPUFallback"} <= set(options) and ("calib" in options) == (precision == "int8")
    for release in ROW_RELEASES[target]:
        unknown = [o for o in options if o not in TRTEXEC_OPTIONS[release]]
        assert not unknown, "trtexec {} does not know --{}".format(release, ", --".join(unknown))


# --- the runner, through the fakes -------------------------------------------------------------------

SHAPE = (3, 4, 4)


def _engine(folder: Path, version: str, profile=(2, 4, 8), static=None, **spec) -> Path:
    """A fake engine (JSON the fake runtime reads) and its sidecar for ``version``."""
    batch = static or -1
    engine = folder / "model_fp16.engine"
    engine.write_text(
        json.dumps(
            dict(
                {
                    "input": "input",
                    "output": "logits",
                    "shape": [batch, *SHAPE],
                    "classes": 3,
                    "profile": None if static else list(profile),
                },
                **spec,
            )
        )
    )
    plan = plan_engine(
        resolve_trt_release(version),
        "fp16",
        "input",
        "logits",
        (batch, *SHAPE),
        None if static else BatchProfile(*profile),
    )
    sidecar = make_sidecar(
        plan, DeviceInfo(fake_trt.VERSIONS[version], "Orin", "8.7"), "onnx-sha", sha256_file(engine), "fake"
    )
    engine.with_name(engine.name + ".json").write_text(json.dumps(sidecar))
    return engine


def _expected(images: np.ndarray) -> np.ndarray:
    return images.reshape(len(images), -1).mean(axis=1)[:, None] + np.arange(3)


def _images(count: int) -> np.ndarray:
    return np.random.default_rng(count).standard_normal((count, *SHAPE)).astype(np.float32)


@pytest.fixture(params=sorted(fake_trt.VERSIONS))
def version(request, monkeypatch):
    fake_trt.install(monkeypatch, request.param)
    return request.param


def test_runner_runs_batches_inside_the_profile(version, tmp_path):
    from edgetl.runtime.tensorrt import TrtRunner

    with TrtRunner(_engine(tmp_path, version)) as runner:
        for count in (2, 5, 8):
            images = _images(count)
            np.testing.assert_allclose(runner.infer({"input": images})["logits"], _expected(images), rtol=1e-5)
        assert runner.batch_range() == (2, 8)


def test_runner_copies_through_pinned_host_memory(version, tmp_path):
    """Asynchronous copies overlap only from page-locked memory (cudaMallocHost), as NVIDIA's samples do."""
    from edgetl.runtime.tensorrt import TrtRunner

    with TrtRunner(_engine(tmp_path, version)) as runner:
        pinned, copies = set(), []
        malloc_host, memcpy = runner.cudart.cudaMallocHost, runner.cudart.cudaMemcpyAsync

        def record_pinned(nbytes):
            result = malloc_host(nbytes)
            pinned.add(int(result[1]))
            return result

        def record_copy(dst, src, nbytes, kind, stream):
            copies.append(int(src) if kind.name.endswith("HostToDevice") else int(dst))
            return memcpy(dst, src, nbytes, kind, stream)

        runner.cudart.cudaMallocHost, runner.cudart.cudaMemcpyAsync = record_pinned, record_copy
        images = _images(5)
        first = runner.infer({"input": images})["logits"]
        second = runner.infer({"input": images * 2})["logits"]  # reused buffers: earlier results stay intact
        np.testing.assert_allclose(first, _expected(images), rtol=1e-5)
        np.testing.assert_allclose(second, _expected(images * 2), rtol=1e-5)
    assert copies and all(address in pinned for address in copies)


@pytest.mark.parametrize("before, batch", [(None, 16), (None, 1), (4, 16)])
def test_runner_refuses_a_batch_outside_the_profile(version, tmp_path, before, batch):
    from edgetl.runtime.tensorrt import TrtRunner

    with TrtRunner(_engine(tmp_path, version)) as runner:
        if before:  # TensorRT keeps the earlier valid shape: 4 rows would come back for 16
            runner.infer({"input": _images(before)})
        with pytest.raises(ConfigError, match="batch of 2 to 8 .*got {}".format(batch)):
            runner.infer({"input": _images(batch)})


def test_no_execution_context_is_a_clear_error(version, tmp_path):
    from edgetl.runtime.tensorrt import TrtRunner

    runner = TrtRunner(_engine(tmp_path, version, out_of_memory=True))
    with pytest.raises(DependencyError, match="execution context"):
        runner.activate()
    assert not runner.is_active


@pytest.mark.parametrize("count, chunk", [(17, 16), (1, 8), (9, 8), (3, 1)])
def test_infer_batched_keeps_every_chunk_inside_the_profile(version, tmp_path, count, chunk):
    from edgetl.runtime.base import infer_batched
    from edgetl.runtime.tensorrt import TrtRunner

    images = _images(count)
    with TrtRunner(_engine(tmp_path, version)) as runner:  # profile 2..8: split above 8, pad below 2
        outputs = infer_batched(runner, "input", images, None, chunk)
    np.testing.assert_allclose(outputs, _expected(images), rtol=1e-5)


def test_bench_latency_refuses_a_batch_outside_the_profile_before_timing(version, tmp_path, monkeypatch):
    from edgetl.bench import latency

    def no_timing(*args, **kwargs):
        raise AssertionError("timed a batch the engine cannot run")

    monkeypatch.setattr(latency, "time_interleaved", no_timing)
    engine = _engine(tmp_path, version, profile=(1, 1, 8))
    with pytest.raises(ConfigError, match=r"batch of 1 to 8 .*--batch 16"):
        latency.bench_latency(latency.LatencyConfig([str(engine)], batches=(1, 16), warmup=0, iters=1, rounds=1))


# --- build-engine, through the CLI ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def static_bundle(tiny_run, tmp_path_factory):
    from edgetl.export.job import ExportConfig, export_run

    out = tmp_path_factory.mktemp("static") / "bundle"
    export_run(ExportConfig(run=str(tiny_run), out=str(out), batch=1))
    return out


def _build_engine(bundle: Path, *options: str):
    from edgetl.cli import main

    return CliRunner().invoke(main, ["build-engine", str(bundle), "--precision", "fp32", *options])


def test_build_engine_without_tensorrt_names_the_dependency(static_bundle):
    result = _build_engine(static_bundle)
    assert result.exit_code == 1 and "tensorrt" in result.output and "static batch" not in result.output


@pytest.mark.parametrize("fake", ["8.5", "10.3"])
def test_build_engine_on_a_static_bundle_builds_its_batch(static_bundle, tmp_path, monkeypatch, fake):
    """The build follows the bundle's static batch; the check on the verification sample then rejects the
    fake engine (its outputs are not the model's), which is moved aside so nothing serves it."""
    import shutil

    from edgetl.contracts.bundle import Bundle
    from edgetl.runtime.tensorrt import TrtRunner

    fake_trt.install(monkeypatch, fake)
    bundle = tmp_path / "bundle"
    shutil.copytree(str(static_bundle), str(bundle))
    result = _build_engine(bundle)
    assert result.exit_code == 3, result.output
    assert "model_fp32.engine: top-1 differs from the reference" in result.output
    assert "moved to model_fp32.engine.rejected" in result.output and len(result.output.strip().splitlines()) == 1
    assert not (bundle / "model_fp32.engine").exists() and Bundle.load(bundle).engines() == []
    plan = Bundle.load(bundle).engine_plan("model_fp32.engine")
    assert plan["profile"] is None and plan["input_shape"][0] == 1
    lineage = Bundle.load(bundle).manifest["lineage"]
    engine = lineage["artifacts"]["model_fp32.engine"]  # built from model.onnx, so from the bundle's checkpoint
    assert (engine["from"], engine["precision"], engine["checkpoint_sha256"]) == (
        "model.onnx", "fp32", lineage["checkpoint_sha256"],
    )  # fmt: skip
    with TrtRunner(bundle / "model_fp32.engine.rejected", onnx_path=bundle / "model.onnx") as runner:
        assert runner.batch_range() == (1, 1)
    refused = _build_engine(bundle, "--max-batch", "8")
    assert refused.exit_code == 1 and "static batch of 1" in refused.output


def test_variants_export_for_the_installed_tensorrt(version):
    """bench variants on a TensorRT host exports for that TensorRT (11 needs its fp16 ONNX), not the default."""
    from edgetl.bench import variants
    from edgetl.trt.plan import resolve_trt_release

    installed = variants.installed_tensorrt_version()
    assert installed == fake_trt.VERSIONS[version]
    assert resolve_trt_release(installed).name == version


@pytest.fixture(scope="module")
def int8_static_bundle(tiny_run, tmp_path_factory):
    """A batch-1 bundle with the INT8 trt form and its calibration cache (random-init model: gate recorded only)."""
    from edgetl.export.job import ExportConfig, export_run

    out = tmp_path_factory.mktemp("int8") / "bundle"
    export_run(
        ExportConfig(
            run=str(tiny_run), out=str(out), batch=1, precision="int8", int8_form="trt", calib_size=12,
            max_int8_drop=100.0,
            calib_dir=str(out.parent / "calibration"),
        )
    )  # fmt: skip
    return out


@pytest.mark.parametrize("fake", ["8.5", "10.3"])
def test_build_engine_for_a_dla_core_takes_int8_from_the_stamped_cache(int8_static_bundle, tmp_path, monkeypatch, fake):
    import shutil

    from edgetl.cli import main
    from edgetl.runtime.tensorrt import TrtRunner
    from edgetl.trt.calibration_cache import parse_cache

    fake_trt.install(monkeypatch, fake)
    bundle = tmp_path / "bundle"
    shutil.copytree(str(int8_static_bundle), str(bundle))
    result = CliRunner().invoke(main, ["build-engine", str(bundle), "--precision", "int8", "--dla-core", "1"])
    # the fake engine's outputs are not the model's: the check on the verification sample moves it aside
    assert result.exit_code == 3 and "moved to model_int8_dla1.engine.rejected" in result.output, result.output
    rejected = bundle / "model_int8_dla1.engine.rejected"
    engine = json.loads(rejected.read_text())
    number = {"8.5": 8502, "10.3": 100300}[fake]
    assert engine["dla_core"] == 1 and engine["calibration"] == "TRT-{}-EntropyCalibration2".format(number)
    assert engine["input"] == "input" and engine["shape"][0] == 1  # the fp32 graph, quantized by the cache
    assert parse_cache((bundle / "calibration.cache").read_text())[0] == 100300  # the file itself is untouched
    sidecar = json.loads((bundle / "model_int8_dla1.engine.rejected.json").read_text())
    assert (sidecar["dla_core"], sidecar["gpu_fallback"], sidecar["onnx"]) == (1, True, "model.onnx")
    with TrtRunner(rejected, onnx_path=bundle / "model.onnx") as runner:
        assert runner.engine.runtime_dla_core == 1


def test_build_engine_writes_the_triton_plan_only_for_a_verified_engine(tiny_run, tmp_path, monkeypatch):
    """The export plans the Triton copy of the engine; a build whose engine fails verification (the fake's
    outputs are not the model's) writes no model.plan, so tritonserver never loads a rejected engine."""
    from edgetl.cli import main
    from edgetl.contracts.bundle import Bundle
    from edgetl.export.job import ExportConfig, export_run

    out = tmp_path / "bundle"
    export_run(ExportConfig(run=str(tiny_run), out=str(out), targets=("triton",)))
    plan = "triton-trt/{}_trt/1/model.plan".format(Path(tiny_run).resolve().name)
    assert Bundle.load(out).engine_plan("model_fp32.engine")["also_write"] == [plan]
    script = (out / "build_engine.sh").read_text()
    assert script.index("edgetl verify") < script.index("cp model_fp32.engine " + plan)
    fake_trt.install(monkeypatch, "10.3")
    result = CliRunner().invoke(main, ["build-engine", str(out), "--precision", "fp32"])
    assert result.exit_code == 3 and "model_fp32.engine.rejected" in result.output, result.output
    assert not (out / plan).exists()


@pytest.mark.trt
def test_real_tensorrt_builds_the_triton_plan_and_it_deserializes(tiny_run, tmp_path):
    """On a machine with TensorRT and a GPU: the plan Triton loads is a real engine of this TensorRT."""
    import tensorrt as trt

    from edgetl.export.job import ExportConfig, export_run
    from edgetl.trt.build import build_bundle_engine

    out = tmp_path / "bundle"
    export_run(ExportConfig(run=str(tiny_run), out=str(out), targets=("triton",), trt_version=trt.__version__))
    build_bundle_engine(out, "fp16")
    plan = next((out / "triton-trt").glob("*_trt/1/model.plan"))
    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(plan.read_bytes())
    assert engine is not None and engine.num_io_tensors == 2


def test_export_with_trt_builds_for_the_dla_core(tiny_run, tmp_path, monkeypatch):
    from edgetl.export.job import ExportConfig, export_run

    fake_trt.install(monkeypatch, "10.3")
    config = ExportConfig(run=str(tiny_run), out=str(tmp_path), batch=1, precision="fp16", trt=True, dla_core=0)
    with pytest.raises(GateError, match="model_fp16_dla0.engine.rejected"):  # the fake's outputs are not the model's
        export_run(config)
    report = json.loads((tmp_path / "export_report.json").read_text())
    assert report["engine"]["status"] == "failed verification"
    assert json.loads((tmp_path / "model_fp16_dla0.engine.rejected").read_text())["dla_core"] == 0
    script = (tmp_path / "build_engine.sh").read_text()
    assert "--useDLACore=0" in script and "--allowGPUFallback" in script


# --- what a build writes for Triton, and what it pins -------------------------------------------------


@pytest.fixture(scope="module")
def triton_bundle(tiny_run, tmp_path_factory):
    """A bundle with the Triton target (batch range 1-8: max_batch_size 8)."""
    from edgetl.export.job import ExportConfig, export_run

    out = tmp_path_factory.mktemp("triton") / "bundle"
    export_run(ExportConfig(run=str(tiny_run), out=str(out), targets=("triton",)))
    return out


def _copy(bundle: Path, tmp_path: Path) -> Path:
    import shutil

    shutil.copytree(str(bundle), str(tmp_path / "bundle"))
    return tmp_path / "bundle"


def test_an_engine_that_could_not_run_is_not_verified_and_not_copied_for_triton(
    triton_bundle, tmp_path, monkeypatch, caplog
):
    """No execution context (TensorRT's None, mostly out of GPU memory): the engine stays built, unverified,
    and no model.plan is written for Triton to serve."""
    from edgetl.cli import main

    bundle = _copy(triton_bundle, tmp_path)
    fake_trt.install(monkeypatch, "10.3")
    monkeypatch.setattr(fake_trt.Engine, "create_execution_context", lambda self: None)
    result = CliRunner().invoke(main, ["build-engine", str(bundle), "--precision", "fp32"])
    assert result.exit_code == 0, result.output
    assert (bundle / "model_fp32.engine").is_file()
    assert not list((bundle / "triton-trt").glob("*/1/model.plan"))
    assert "model_fp32.engine is not verified" in caplog.text


def test_build_engine_refuses_a_batch_range_the_triton_config_cannot_send(triton_bundle, tmp_path, monkeypatch):
    """config.pbtxt says max_batch_size 8 (the export's range): an engine for batches up to 4 would fail in
    Triton, so the build is refused before anything is built."""
    from edgetl.cli import main

    bundle = _copy(triton_bundle, tmp_path)
    fake_trt.install(monkeypatch, "10.3")
    result = CliRunner().invoke(main, ["build-engine", str(bundle), "--precision", "fp32", "--max-batch", "4"])
    assert result.exit_code != 0 and "max_batch_size 8" in result.output, result.output
    assert "--max-batch 8" in result.output and len(result.output.strip().splitlines()) == 1
    assert not list(bundle.glob("model_fp32.engine*"))


def test_a_dla_export_for_triton_plans_its_model_plan_on_that_core(tiny_run, tmp_path):
    from edgetl.contracts.bundle import Bundle
    from edgetl.export.job import ExportConfig, export_run

    with pytest.raises(ConfigError, match="--for triton with --dla-core.*--max-batch 1"):
        ExportConfig(run=str(tiny_run), targets=("triton",), precision="fp16", dla_core=1, min_batch=8, max_batch=8)
    out = tmp_path / "bundle"
    config = ExportConfig(
        run=str(tiny_run), out=str(out), targets=("triton",), precision="fp16", dla_core=1, min_batch=1, max_batch=1
    )
    export_run(config)
    name = Path(tiny_run).resolve().name
    plan = "triton-trt/{}_trt/1/model.plan".format(name)
    assert Bundle.load(out).engine_plan("model_fp16_dla1.engine")["also_write"] == [plan]
    text = (out / "triton-trt" / (name + "_trt") / "config.pbtxt").read_text()
    assert "max_batch_size: 1" in text and "secondary_devices {\n    device_id: 1\n  }" in text
    assert "cp model_fp16_dla1.engine " + plan in (out / "build_engine.sh").read_text()


def test_the_int8_fallback_layers_are_pinned_to_fp32_in_the_built_network(
    int8_static_bundle, tmp_path, monkeypatch, caplog
):
    import onnx

    from edgetl.contracts.bundle import Bundle
    from edgetl.export.job import int8_fp32_layers
    from edgetl.trt.build import build_engine

    bundle = _copy(int8_static_bundle, tmp_path)
    assert Bundle.load(bundle).engine_plan("model_int8.engine")["fp32_layers"] == []  # the gate passed as is
    model = onnx.load(str(bundle / "model_int8.onnx"))
    conv = next(n.name for n in model.graph.node if n.op_type == "Conv")
    onnx.helper.set_model_props(model, {"int8_fp32_layers": json.dumps([conv, "gone/Conv"])})
    onnx.save(model, str(tmp_path / "kept.onnx"))
    assert int8_fp32_layers(tmp_path / "kept.onnx") == (conv, "gone/Conv")
    fake_trt.install(monkeypatch, "10.3")
    shape = (1, 3) + tuple(d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[2:])
    plan = plan_engine(resolve_trt_release("10.3"), "int8", "input", "logits", shape, fp32_layers=(conv, "gone/Conv"))
    engine = json.loads(build_engine(bundle, plan).read_text())
    assert engine["fp32_layers"] == [conv] and engine["obey_precision_constraints"] is True
    assert "no TensorRT layer of the fp32 fallback node(s) gone/Conv" in caplog.text
