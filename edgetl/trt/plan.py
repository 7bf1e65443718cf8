"""How TensorRT is called, per version: one table of targets and pure decisions derived from it.

Nothing here imports tensorrt: builder flags, optimisation-profile shapes, the equivalent
``trtexec`` command line, ``build_engine.sh`` and the engine sidecar (with its compatibility
check) are all decided and tested without it. Python 3.8 syntax (runs on JetPack 5).

Sources for the table: /work/notes/trt_api.md (TensorRT release notes, migration guides and
onnx-tensorrt operator docs). Values marked "conservative" are the lowest limit the sources
guarantee for every release in the row.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from edgetl import __version__
from edgetl.contracts.bundle import (
    ONNX_FILES,
    PRECISIONS,
    REJECTED_SUFFIX,
    VERIFY_DATA_LOADER,
    engine_file,
    sidecar_file,
)
from edgetl.contracts.engine_sidecar import SIDECAR_FORMAT, DeviceInfo, version_tuple
from edgetl.contracts.formats import CALIBRATION_CACHE
from edgetl.errors import ConfigError
from edgetl.runtime.verify import TOLERANCES
from edgetl.trt.calibration_cache import stamp_script_lines

DEFAULT_TRT_RELEASE = "10.3"  # JetPack 6.1/6.2; its ONNX limits (opset 17, IR 8 by default) also suit JetPack 6.0
DEFAULT_WORKSPACE_MIB = 1024
_IO_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")


@dataclass(frozen=True)
class TrtRelease:
    """What one TensorRT release line accepts and needs."""

    name: str
    since: Tuple[int, int]  # the lowest (major, minor) this row describes
    platform: str
    max_opset: int  # highest ONNX opset its parser imports
    max_ir_version: int  # ONNX IR version of the onnx package inside its parser
    explicit_batch_flag: bool  # create_network() needs 1 << EXPLICIT_BATCH (gone in 11)
    precision_flags: bool  # BuilderFlag.FP16/INT8 exist; False: strongly typed only (11+)
    progress_monitor: bool  # trt.IProgressMonitor exists
    skip_inference_option: str  # trtexec's build-only switch: --buildOnly before 8.6, --skipInference from 8.6
    dla: bool = False  # a JetPack release on Jetson Orin/Xavier, whose DLA cores engines can target

    @property
    def strongly_typed(self) -> bool:
        return not self.precision_flags


# trtexec options: 8.5 knows --buildOnly only (an unknown option makes trtexec exit); 8.6 adds
# --skipInference and deprecates --buildOnly; 10.0 removes --buildOnly (NVIDIA/TensorRT
# samples/common/sampleOptions.cpp on release/8.5, 8.6, 10.0).
TRT_RELEASES = (
    TrtRelease("8.5", (8, 5), "JetPack 5.1 (Python 3.8)", 17, 8, True, True, False, "--buildOnly", dla=True),
    TrtRelease("8.6", (8, 6), "JetPack 6.0", 17, 8, True, True, False, "--skipInference", dla=True),
    # 10.0-10.5: parser opset 9-20 (10.0 docs); ONNX submodule <= 1.16 -> IR 9 is conservative.
    TrtRelease("10.3", (10, 0), "JetPack 6.1/6.2", 20, 9, False, True, True, "--skipInference", dla=True),
    # 10.6+: ONNX 1.17 submodule (opset 22, IR 10); later 10.x accept more (10.15: opset 24).
    TrtRelease("10.x", (10, 6), "x86 / current TensorRT 10", 22, 10, False, True, True, "--skipInference"),
    # 11: strongly typed; no FP16/INT8 flags, no calibrators. The row starts at 11.0, and only 11.2
    # parses opset 24 (11.5: 25): opset 22 / IR 10 (as 10.6+) is conservative for 11.0 and 11.1.
    TrtRelease(
        "11.x", (11, 0), "x86; JetPack >= 7.2.2 on AGX Orin/Thor", 22, 10, False, False, True, "--skipInference"
    ),
)
TRT_RELEASE_NAMES = tuple(t.name for t in TRT_RELEASES)


def resolve_trt_release(version: str) -> TrtRelease:
    """The table row for a TensorRT version: a row name (``10.x``) or a version (``8.6.2.3``, ``10``)."""
    for target in TRT_RELEASES:
        if version == target.name:
            return target
    numbers = version_tuple(version)
    if not numbers:
        raise ConfigError(
            "--trt-version must be a TensorRT version (e.g. 8.6, 10.3.0.30) or one of {}; got {!r}".format(
                ", ".join(TRT_RELEASE_NAMES), version
            )
        )
    key = (numbers[0], numbers[1] if len(numbers) > 1 else 0)
    rows = [t for t in TRT_RELEASES if t.since[0] == key[0] and t.since <= key]
    if key[0] == 8 and len(numbers) == 1:
        raise ConfigError("--trt-version 8 is ambiguous: give 8.5 (JetPack 5) or 8.6 (JetPack 6.0)")
    if not rows:
        raise ConfigError(
            "TensorRT {} is not supported; supported: {}".format(
                version, ", ".join("{} ({})".format(t.name, t.platform) for t in TRT_RELEASES)
            )
        )
    return max(rows, key=lambda t: t.since)


def ir_version_for_opset(opset: int) -> int:
    """The lowest ONNX IR version that can carry ``opset`` (from onnx's release table)."""
    import onnx.helper

    for row in onnx.helper.VERSION_TABLE:
        if row[2] >= opset:
            return int(row[1])
    raise ConfigError("the installed onnx package does not know opset {}".format(opset))


def onnx_versions(target: TrtRelease, opset: int) -> Tuple[int, int]:
    """(opset, IR version) to write for ``target``; ConfigError naming the fix if it cannot parse them."""
    if opset > target.max_opset:
        raise ConfigError(
            "TensorRT {} ({}) parses ONNX opset <= {}; use --opset {} or a newer --trt-version".format(
                target.name, target.platform, target.max_opset, target.max_opset
            )
        )
    ir_version = ir_version_for_opset(opset)
    if ir_version > target.max_ir_version:
        raise ConfigError(
            "opset {} needs ONNX IR version {}, newer than TensorRT {}'s parser accepts ({})".format(
                opset, ir_version, target.name, target.max_ir_version
            )
        )
    return opset, ir_version


@dataclass(frozen=True)
class BatchProfile:
    """The batch range of an optimisation profile."""

    min: int = 1
    opt: int = 1
    max: int = 8

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise ConfigError(
                "need 1 <= --min-batch <= --opt-batch <= --max-batch, got {}/{}/{}".format(self.min, self.opt, self.max)
            )


def batch_profile(
    static_batch: Optional[int],
    min_batch: Optional[int] = None,
    opt_batch: Optional[int] = None,
    max_batch: Optional[int] = None,
    recorded: Optional[BatchProfile] = None,
) -> Optional[BatchProfile]:
    """The batch range to build: None for a static batch (any given value must equal it); else the
    given values (missing ones as 1 / min / max(8, opt)), or ``recorded`` (the bundle's) when none is given."""
    given = [v for v in (min_batch, opt_batch, max_batch) if v is not None]
    if static_batch is not None:
        if any(v != static_batch for v in given):
            raise ConfigError(
                "the model has a static batch of {}: --min/--opt/--max-batch must be {} or left out "
                "(export without --batch for a range)".format(static_batch, static_batch)
            )
        return None
    if not given and recorded is not None:
        return recorded
    low = min_batch or 1
    opt = opt_batch or low
    return BatchProfile(low, opt, max_batch or max(8, opt))


@dataclass(frozen=True)
class EnginePlan:
    """Everything that decides one engine build, for the Python API and for trtexec alike."""

    target: str
    precision: str
    onnx: str  # bundle file the engine is built from
    engine: str
    input_name: str
    output_name: str
    input_shape: Tuple[int, ...]  # (batch, C, H, W); batch -1 when dynamic
    profile: Optional[BatchProfile]  # None: static batch
    builder_flags: Tuple[str, ...]  # trt.BuilderFlag member names
    network_flags: Tuple[str, ...]  # trt.NetworkDefinitionCreationFlag member names
    workspace_mib: int = DEFAULT_WORKSPACE_MIB
    timing_cache: Optional[str] = None
    dla_core: Optional[int] = None  # a Jetson DLA core (layers it cannot run fall back to the GPU)
    calibration_cache: Optional[str] = None  # INT8 from the fp32 ONNX and these scales (implicit quantization)
    also_write: Tuple[str, ...] = ()  # more paths the engine is written to (a Triton model repository's model.plan)
    fp32_layers: Tuple[str, ...] = ()  # layers (ONNX node names) pinned to fp32: the INT8 fallback's, as gated

    def shapes(self) -> Dict[str, Tuple[int, ...]]:
        """min/opt/max input shapes of the optimisation profile (empty when the batch is static)."""
        if self.profile is None:
            return {}
        rest = tuple(self.input_shape[1:])
        return {k: (getattr(self.profile, k),) + rest for k in ("min", "opt", "max")}

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "EnginePlan":
        data = dict(data)
        data["profile"] = None if data.get("profile") is None else BatchProfile(**data["profile"])
        for key in ("input_shape", "builder_flags", "network_flags", "also_write", "fp32_layers"):
            data[key] = tuple(data.get(key, ()))
        return cls(**data)


def onnx_for_precision(target: TrtRelease, precision: str, implicit_int8: bool = False) -> str:
    """The bundle ONNX an engine of ``precision`` is built from on ``target`` (``implicit_int8``: INT8
    from the fp32 ONNX and a calibration cache, the flow of a DLA)."""
    if precision == "int8" and not implicit_int8:
        return ONNX_FILES["int8"]  # explicit Q/DQ: the one INT8 path on every target
    if precision == "fp16" and target.strongly_typed:
        return ONNX_FILES["fp16"]  # TensorRT >= 11 has no FP16 flag: the ONNX tensors must be fp16
    return ONNX_FILES["fp32"]


def builder_flags(target: TrtRelease, precision: str, dla: bool = False) -> Tuple[str, ...]:
    """BuilderFlag names to set. INT8 (Q/DQ) also enables FP16 for the layers left unquantized; a DLA
    engine runs the layers its DLA cannot on the GPU (GPU_FALLBACK)."""
    if precision not in PRECISIONS:
        raise ConfigError("precision must be fp32, fp16 or int8, got {!r}".format(precision))
    fallback = ("GPU_FALLBACK",) if dla else ()
    if target.strongly_typed or precision == "fp32":
        return fallback
    return (("FP16",) if precision == "fp16" else ("INT8", "FP16")) + fallback


def check_dla(target: TrtRelease, precision: str, dla_core: int, static: bool) -> None:
    """ConfigError unless an engine for DLA core ``dla_core`` can be built as planned."""
    problems = [
        (dla_core >= 0, "--dla-core must be >= 0"),
        (
            target.dla,
            "--dla-core: DLA engines are built by JetPack's TensorRT (--trt-version {}); TensorRT {} ({}) "
            "is not one".format(", ".join(t.name for t in TRT_RELEASES if t.dla), target.name, target.platform),
        ),
        (precision in ("fp16", "int8"), "--dla-core: a DLA runs fp16 or int8; add --fp16 or --int8"),
        (static, "--dla-core: a DLA needs a fixed batch; export with --batch N or min = opt = max batch"),
    ]
    for ok, message in problems:
        if not ok:
            raise ConfigError(message)


def plan_engine(
    target: TrtRelease,
    precision: str,
    input_name: str,
    output_name: str,
    input_shape: Sequence[int],
    profile: Optional[BatchProfile] = None,
    workspace_mib: int = DEFAULT_WORKSPACE_MIB,
    timing_cache: Optional[str] = None,
    dla_core: Optional[int] = None,
    also_write: Sequence[str] = (),
    fp32_layers: Sequence[str] = (),
) -> EnginePlan:
    """Decide one engine build. ``input_shape[0]`` is -1 for a dynamic batch (then a profile is used).
    With ``dla_core`` the engine targets that DLA core, with GPU fallback; its INT8 comes from the fp32
    ONNX and the calibration cache (the DLA flow), not the Q/DQ ONNX.

    ``fp32_layers``: the ONNX nodes the INT8 fallback kept in fp32. The accuracy gate judged them in fp32, but
    with the FP16 flag (set for INT8 builds) TensorRT may run unquantized layers in fp16, so a Q/DQ INT8 engine
    pins them to fp32 (precision constraints "obey"). Not applied where they cannot be: strongly typed
    TensorRT (no FP16 flag: they run in the ONNX's fp32) and DLA (fp16/int8 only; its INT8 is the calibration
    cache's)."""
    for name in (input_name, output_name):
        if not _IO_NAME.match(name):
            raise ConfigError("tensor name {!r} cannot be passed to trtexec; use letters, digits, _ and .".format(name))
    if workspace_mib < 1:
        raise ConfigError("--workspace must be >= 1 MiB, got {}".format(workspace_mib))
    shape = tuple(int(v) for v in input_shape)
    if shape[0] == -1:
        profile = profile or BatchProfile()
    elif profile is not None and not profile.min == profile.opt == profile.max == shape[0]:
        raise ConfigError(
            "the model has a static batch of {}; the batch profile must be {} everywhere "
            "(export without --batch for a range)".format(shape[0], shape[0])
        )
    else:
        profile = None
    dla = dla_core is not None
    if dla:
        check_dla(target, precision, int(dla_core or 0), profile is None or profile.min == profile.max)
    implicit_int8 = dla and precision == "int8"
    pinned = tuple(fp32_layers) if precision == "int8" and not dla and target.precision_flags else ()
    for name in pinned:
        if not name or "," in name or "'" in name:
            raise ConfigError("layer name {!r} cannot be passed to trtexec --layerPrecisions".format(name))
    return EnginePlan(
        target.name,
        precision,
        onnx_for_precision(target, precision, implicit_int8),
        engine_file(precision, dla_core),
        input_name,
        output_name,
        shape,
        profile,
        builder_flags(target, precision, dla),
        ("EXPLICIT_BATCH",) if target.explicit_batch_flag else (),
        workspace_mib,
        timing_cache,
        dla_core,
        CALIBRATION_CACHE if implicit_int8 else None,
        tuple(also_write),
        pinned,
    )


def _dims(shape: Sequence[int]) -> str:
    return "x".join(str(v) for v in shape)


_TRTEXEC_FLAGS = {"FP16": "--fp16", "INT8": "--int8", "GPU_FALLBACK": "--allowGPUFallback"}  # BuilderFlag -> trtexec


def trtexec_command(plan: EnginePlan) -> List[str]:
    """The trtexec arguments that build the same engine (same ONNX, flags, profile, pool, cache).

    ``--memPoolSize=workspace:<MiB>`` (plain MiB integer) works from 8.4 on; ``--workspace`` was
    removed in 10. ``--fp16``/``--int8`` were removed in 11, where the ONNX carries the types."""
    args = ["trtexec", "--onnx=" + plan.onnx, "--saveEngine=" + plan.engine]
    args += [_TRTEXEC_FLAGS[flag] for flag in plan.builder_flags]
    if plan.calibration_cache:
        args.append("--calib=" + plan.calibration_cache)
    if plan.dla_core is not None:
        args.append("--useDLACore={}".format(plan.dla_core))
    if plan.fp32_layers:  # trtexec splits the list at commas and each entry at its last colon
        args += ["--precisionConstraints=obey", "--layerPrecisions=" + ",".join(n + ":fp32" for n in plan.fp32_layers)]
    for key, shape in sorted(plan.shapes().items(), key=lambda kv: ("min", "opt", "max").index(kv[0])):
        args.append("--{}Shapes={}:{}".format(key, plan.input_name, _dims(shape)))
    args.append("--memPoolSize=workspace:{}".format(plan.workspace_mib))
    if plan.timing_cache:
        args.append("--timingCacheFile=" + plan.timing_cache)
    args.append(resolve_trt_release(plan.target).skip_inference_option)
    return args


# BuilderFlag -> Polygraphy's `run` options (polygraphy/tools/args/backend/trt/config.py)
_POLYGRAPHY_FLAGS = {"FP16": "--fp16", "INT8": "--int8", "GPU_FALLBACK": "--allow-gpu-fallback"}


def polygraphy_command(plan: EnginePlan, atol: float) -> List[str]:
    """Polygraphy's check of TensorRT against ONNX Runtime on the bundle's verification sample, for devices
    without edgetl: it builds the plan's ONNX as the plan does (its precision flags, DLA with GPU fallback,
    the calibration cache of a DLA INT8 build, the layers pinned to fp32) plus TF32, which trtexec and the
    TensorRT API enable by default, and compares every output within ``atol``. Polygraphy's ``--use-dla``
    builds for DLA core 0: the same DLA hardware as any other core."""
    flags = [_POLYGRAPHY_FLAGS[flag] for flag in plan.builder_flags] + ["--tf32"]
    if plan.dla_core is not None:
        flags.append("--use-dla")
    if plan.calibration_cache:
        flags += ["--calibration-cache", plan.calibration_cache]
    if plan.fp32_layers:
        flags += ["--precision-constraints", "obey", "--layer-precisions"]
        flags += [name + ":float32" for name in plan.fp32_layers]
    return (
        ["polygraphy", "run", plan.onnx, "--trt", "--onnxrt"]
        + flags
        + ["--data-loader-script", VERIFY_DATA_LOADER, "--atol", "{:.4g}".format(atol), "--rtol", "0"]
    )


def _verify_lines(plan: EnginePlan, reference_scale: Optional[float]) -> List[str]:
    """After the build: sidecar and ``edgetl verify`` (a failing engine is moved aside), or without edgetl the
    equivalent Polygraphy command and "not verified"."""
    engine, rejected = shlex.quote(plan.engine), shlex.quote(plan.engine + REJECTED_SUFFIX)
    sidecar, rejected_sidecar = (
        shlex.quote(sidecar_file(plan.engine)),
        shlex.quote(sidecar_file(plan.engine + REJECTED_SUFFIX)),
    )
    without = [
        "edgetl is not installed: no sidecar written for {} (edgetl predict refuses engines without one)".format(
            plan.engine
        )
    ]
    if reference_scale is None:
        check = ['    echo "{}: no verification sample in this bundle: not verified" >&2'.format(plan.engine)]
        without.append("{} is not verified: this bundle has no verification sample".format(plan.engine))
    else:
        check = [
            '    "$PYTHON" -m edgetl verify . --only {} || {{ mv -f {} {}; mv -f {} {}; '
            'echo "{} failed verification: moved to {}" >&2; exit 3; }}'.format(
                engine, engine, rejected, sidecar, rejected_sidecar, plan.engine, plan.engine + REJECTED_SUFFIX
            )
        ]
        command = polygraphy_command(plan, TOLERANCES[plan.precision] * reference_scale)
        without += [
            "{} is not verified. To compare TensorRT with ONNX Runtime on this bundle's verification sample, "
            "run here:".format(plan.engine),
            "  " + " ".join(shlex.quote(a) for a in command),
        ]
    return (
        ['if "$PYTHON" -c "import edgetl" 2>/dev/null; then', '    "$PYTHON" -m edgetl.trt.build --sidecar ' + engine]
        + check
        + ["else"]
        + ["    echo {} >&2".format(shlex.quote(line)) for line in without]
        + ["fi"]
    )


def build_script(
    plans: Sequence[EnginePlan], target: TrtRelease, notes: Sequence[str] = (), reference_scale: Optional[float] = None
) -> str:
    """``build_engine.sh``: trtexec for each planned engine, run on the device, then its sidecar and its check
    on the bundle's verification sample (``reference_scale``: max(1, max |reference|) of the sample, None
    without one). ``notes`` become comment lines (e.g. why an engine is not planned)."""
    lines = [
        "#!/bin/sh",
        "# Build the TensorRT engine(s) of this bundle ON THE DEVICE: engines are tied to the GPU model and",
        "# the TensorRT version. Generated by edgetl {} for TensorRT {} ({}).".format(
            __version__, target.name, target.platform
        ),
        "set -e",
        'cd "$(dirname "$0")"',
        'TRTEXEC="${TRTEXEC:-trtexec}"',
        'command -v "$TRTEXEC" >/dev/null 2>&1 || TRTEXEC=/usr/src/tensorrt/bin/trtexec  # JetPack location',
        'PYTHON="${PYTHON:-python3}"',
    ] + ["# NOTE: " + note for note in notes]
    caches = sorted({plan.calibration_cache for plan in plans if plan.calibration_cache})
    if caches:
        lines += [""] + stamp_script_lines(caches)
    for plan in plans:
        command = ['"$TRTEXEC"'] + [shlex.quote(a) for a in trtexec_command(plan)[1:]]
        lines += ["", "# {} engine from {}".format(plan.precision, plan.onnx), " \\\n    ".join(command)]
        lines += _verify_lines(plan, reference_scale)
        for path in plan.also_write:  # copies of the verified engine where a --for target loads it
            folder = shlex.quote(path.rpartition("/")[0] or ".")
            lines.append("mkdir -p {} && cp {} {}".format(folder, shlex.quote(plan.engine), shlex.quote(path)))
    return "\n".join(lines) + "\n"


def make_sidecar(
    plan: EnginePlan, device: DeviceInfo, onnx_sha256: str, engine_sha256: str, built_with: str
) -> Dict[str, Any]:
    """The sidecar JSON written next to an engine."""
    return {
        "format": SIDECAR_FORMAT,
        "engine": plan.engine,
        "engine_sha256": engine_sha256,
        "tensorrt_version": device.tensorrt_version,
        "gpu_name": device.gpu_name,
        "compute_capability": device.compute_capability,
        "precision": plan.precision,
        "builder_flags": list(plan.builder_flags),
        "onnx": plan.onnx,
        "onnx_sha256": onnx_sha256,
        "input_name": plan.input_name,
        "output_name": plan.output_name,
        "input_shape": list(plan.input_shape),
        "profile_shapes": {k: list(v) for k, v in plan.shapes().items()},
        "workspace_mib": plan.workspace_mib,
        "dla_core": plan.dla_core,
        "gpu_fallback": "GPU_FALLBACK" in plan.builder_flags,
        "calibration_cache": plan.calibration_cache,
        "built_with": built_with,
        "edgetl_version": __version__,
    }


def describe_parser_error(error: Any) -> str:
    """One line for an ONNX parser error: node index, and name/op where the TensorRT version has them (>= 9.1)."""
    where = "node {}".format(error.node())
    if hasattr(error, "node_name"):
        where += " ({}, {})".format(error.node_name() or "unnamed", error.node_operator())
    return "{}: {}: {}".format(where, str(error.code()).split(".")[-1], error.desc())
