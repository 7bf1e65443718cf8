"""``edgetl doctor``: what works on this machine, what is missing and what does not fit, each with one line
of advice. Device side: torch-free at import, Python 3.8, the core install is enough.

Two halves, so every mapping is unit-tested without a Jetson or a GPU:
- ``collect_facts()`` reads the machine (package versions, a tiny ONNX Runtime session per execution
  provider, torch's view of CUDA, TensorRT, ``/etc/nv_tegra_release``, ``nvpmodel -q``, ...) into a
  plain dict; every heavy module is imported inside its probe only;
- ``diagnose(facts)`` and ``bundle_items(...)`` are pure: facts in, :class:`Item` rows out.
"""

from __future__ import annotations

import json
import platform
import sys
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from edgetl import __version__
from edgetl.contracts.bundle import Bundle, ModelInfo
from edgetl.contracts.engine_sidecar import DeviceInfo, rebuild_hint, sidecar_problems, version_tuple
from edgetl.contracts.lineage import lineage_problem, reference_checkpoint
from edgetl.core.fileio import sha256_file
from edgetl.diagnostics.jetson import jetson_summary, read_jetson, release_for_tensorrt
from edgetl.errors import ConfigError, EdgetlError
from edgetl.runtime.providers import CPU_PROVIDER, CUDA_PROVIDER, TENSORRT_PROVIDER, probe_providers
from edgetl.runtime.tensorrt import cuda_runtime, device_info, load_sidecar
from edgetl.trt.plan import DEFAULT_TRT_RELEASE, TrtRelease, onnx_versions

OK, MISSING, MISMATCH = "ok", "missing", "mismatch"
STATUSES = (OK, MISSING, MISMATCH)
MIN_PYTHON = (3, 8)
CORE_PACKAGES = ("numpy", "onnx")  # onnxruntime is checked on its own (two distributions)
ORT_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu")
PACKAGES = ("numpy", "onnx") + ORT_DISTRIBUTIONS + ("torch", "torchvision", "tensorrt", "cuda-python", "cuda-bindings")


@dataclass(frozen=True)
class Item:
    """One line of the report. ``broken``: this makes ``edgetl doctor`` exit 1 (something edgetl needs fails)."""

    name: str
    status: str  # ok | missing | mismatch
    detail: str
    advice: str = ""
    broken: bool = False

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


# --- reading the machine (the only part with I/O) ------------------------------------------------------------


def package_versions(names: Sequence[str] = PACKAGES) -> Dict[str, str]:
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def probe_onnxruntime() -> Optional[Dict[str, Any]]:
    """Which execution providers onnxruntime claims and which one actually runs a session for each
    (``edgetl.runtime.providers``: the provider list alone claims TensorRT and CUDA on machines without either)."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        return {"error": str(exc)}
    available = list(ort.get_available_providers())
    runs = probe_providers(ort, available)
    return {"version": ort.__version__, "available": available, "runs": runs}


def probe_torch() -> Optional[Dict[str, Any]]:
    """torch's version and CUDA view (device, compute capability, memory); None when torch is not installed."""
    try:
        import torch
    except ImportError:
        return None
    except Exception as exc:  # a broken install (e.g. a wheel for another CUDA/JetPack) fails on import
        return {"version": None, "error": "import failed: " + str(exc).splitlines()[0][:200]}
    info: Dict[str, Any] = {"version": torch.__version__, "cuda_build": torch.version.cuda, "cuda": False}
    try:
        info["cuda"] = bool(torch.cuda.is_available())
        if info["cuda"]:
            prop = torch.cuda.get_device_properties(0)
            info.update(
                device=prop.name,
                capability="{}.{}".format(prop.major, prop.minor),
                memory_gib=round(prop.total_memory / 2**30, 1),
                device_count=torch.cuda.device_count(),
            )
    except Exception as exc:  # CUDA initialisation errors (driver too old, no device node)
        info["cuda"], info["error"] = False, str(exc).splitlines()[0][:200]
    return info


def probe_tensorrt() -> Optional[Dict[str, Any]]:
    """TensorRT's version and, with cuda-python, the GPU it would build for; None when not installed."""
    try:
        import tensorrt as trt
    except ImportError:
        return None
    except Exception as exc:
        return {"version": None, "error": "import failed: " + str(exc).splitlines()[0][:200]}
    info: Dict[str, Any] = {"version": str(trt.__version__), "device": None, "device_error": None}
    try:
        device = device_info(trt, cuda_runtime())
        info["device"] = asdict(device)
    except (ImportError, EdgetlError) as exc:
        info["device_error"] = "cuda-python is not importable ({})".format(str(exc).splitlines()[0][:160])
    except Exception as exc:  # CUDA errors: no GPU, driver mismatch
        info["device_error"] = str(exc).splitlines()[0][:200]
    return info


def collect_facts(probe_providers: bool = True) -> Dict[str, Any]:
    """Everything ``diagnose`` needs, read from this machine."""
    return {
        "python": list(sys.version_info[:3]),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "edgetl": __version__,
        "edgetl_path": str(Path(__file__).resolve().parents[1]),
        "packages": package_versions(),
        "onnxruntime": probe_onnxruntime() if probe_providers else None,
        "torch": probe_torch(),
        "tensorrt": probe_tensorrt(),
        "jetson": read_jetson(),
    }


# --- pure diagnosis -------------------------------------------------------------------------------------------


def _python_item(facts: Dict[str, Any]) -> Item:
    version = tuple(facts.get("python") or ())
    text = ".".join(str(v) for v in version)
    if version[:2] < MIN_PYTHON:
        advice = "edgetl needs Python >= 3.8"
        if version[:2] == (3, 6):
            advice += "; JetPack 4 (Python 3.6) is unsupported: flash JetPack 5.1.x or 6.x"
        return Item("python", MISMATCH, text, advice, broken=True)
    return Item("python", OK, "{} ({})".format(text, facts.get("machine", "")))


def _package_items(facts: Dict[str, Any]) -> List[Item]:
    packages = facts.get("packages", {})
    items = [Item("edgetl", OK, "{} at {}".format(facts.get("edgetl"), facts.get("edgetl_path")))]
    for name in CORE_PACKAGES:
        if name in packages:
            items.append(Item(name, OK, packages[name]))
        else:
            items.append(Item(name, MISSING, "not installed", "pip install edgetl (core install)", broken=True))
    installed = [name for name in ORT_DISTRIBUTIONS if name in packages]
    if len(installed) > 1:
        items.append(
            Item(
                "onnxruntime",
                MISMATCH,
                "both installed: " + ", ".join("{} {}".format(n, packages[n]) for n in installed),
                "they overwrite each other's files: pip uninstall -y onnxruntime onnxruntime-gpu, then install one "
                "(onnxruntime-gpu on x86 with CUDA; on a Jetson NVIDIA's onnxruntime-gpu wheel for your JetPack)",
                broken=True,
            )
        )
    elif installed:
        items.append(Item("onnxruntime", OK, "{} {}".format(installed[0], packages[installed[0]])))
    else:
        items.append(Item("onnxruntime", MISSING, "not installed", "pip install edgetl (core install)", broken=True))
    return items


def _provider_items(ort: Optional[Dict[str, Any]]) -> List[Item]:
    if ort is None:
        return []
    if ort.get("error"):
        return [Item("onnxruntime import", MISMATCH, ort["error"], "reinstall onnxruntime", broken=True)]
    items = []
    for provider in ort.get("available", []):
        run = ort.get("runs", {}).get(provider, {})
        short = provider.replace("ExecutionProvider", "")
        name = "ORT provider " + short
        if run.get("runs_on") == provider and run.get("correct"):
            items.append(Item(name, OK, "a session runs on it"))
            continue
        why = "a session asked for it runs on {}".format(run.get("runs_on"))
        if run.get("error"):
            why += " ({})".format(run["error"])
        advice = {
            "CUDA": "onnxruntime-gpu is installed but cannot start CUDA (no GPU, or CUDA/cuDNN libraries of "
            "another version): predict --device cuda falls back to the CPU",
            "Tensorrt": "the TensorRT provider needs TensorRT's libraries of the version this onnxruntime was "
            "built for; edgetl's trt backend uses TensorRT directly instead",
            "CPU": "reinstall onnxruntime",
        }.get(short, "listed by onnxruntime but not usable here")
        items.append(Item(name, MISMATCH, "claimed, does not run: " + why, advice, broken=short == "CPU"))
    return items


def _torch_item(torch: Optional[Dict[str, Any]], packages: Dict[str, str], on_jetson: bool) -> Item:
    if torch is None:
        advice = (
            "only needed to train/export: on a Jetson install NVIDIA's torch wheel for your JetPack"
            if on_jetson
            else "only needed to train/export: pip install 'edgetl[train]'"
        )
        return Item("torch", MISSING, "not installed (predict with ONNX Runtime or TensorRT works without it)", advice)
    if torch.get("version") is None:
        return Item("torch", MISMATCH, torch.get("error", "import failed"), "reinstall torch for this CUDA/JetPack")
    vision = packages.get("torchvision")
    text = "torch {}, torchvision {}".format(torch["version"], vision or "missing")
    if torch.get("cuda"):
        text += "; CUDA {} on {} (compute capability {}, {} GiB{})".format(
            torch.get("cuda_build"),
            torch.get("device"),
            torch.get("capability"),
            torch.get("memory_gib"),
            ", {} GPUs".format(torch["device_count"]) if torch.get("device_count", 1) > 1 else "",
        )
        if vision is None:
            return Item("torch", MISSING, text, "pip install torchvision matching this torch")
        return Item("torch", OK, text)
    text += "; no CUDA" + (" ({})".format(torch["error"]) if torch.get("error") else "")
    if torch.get("cuda_build") is None:
        text += " (a CPU-only build)"
    if on_jetson:
        return Item(
            "torch",
            MISMATCH,
            text,
            "install NVIDIA's CUDA torch wheel for your JetPack (PyPI's aarch64 torch is CPU-only)",
        )
    return Item("torch", OK, text, "training runs on the CPU; for a GPU install a CUDA build of torch")


def _tensorrt_items(
    trt: Optional[Dict[str, Any]], packages: Dict[str, str], jetson: Optional[Dict[str, Any]]
) -> List[Item]:
    cuda_python = packages.get("cuda-python") or packages.get("cuda-bindings")
    if trt is None:
        advice = (
            "JetPack ships it: sudo apt install nvidia-tensorrt (python3-libnvinfer)"
            if jetson
            else "only needed to build/run engines on this machine: pip install 'edgetl[trt]'"
        )
        items = [Item("tensorrt", MISSING, "not installed", advice)]
    elif trt.get("version") is None:
        items = [Item("tensorrt", MISMATCH, trt.get("error", "import failed"), "reinstall TensorRT", broken=True)]
    else:
        target = release_for_tensorrt(trt["version"])
        if target is None:
            items = [
                Item(
                    "tensorrt",
                    MISMATCH,
                    "{}: edgetl has no --trt-version for it".format(trt["version"]),
                    "edgetl supports TensorRT 8.5 and newer (JetPack 5.1+)",
                    broken=True,
                )
            ]
        else:
            items = [Item("tensorrt", OK, "{} (export with --trt-version {})".format(trt["version"], target.name))]
        jetpack = jetson or {}
        expected = jetpack.get("jetpack_tensorrt")
        if expected and version_tuple(trt["version"])[:2] != version_tuple(expected)[:2]:
            items.append(
                Item(
                    "tensorrt vs JetPack",
                    MISMATCH,
                    "TensorRT {} imports, JetPack {} ships {}".format(trt["version"], jetpack.get("jetpack"), expected),
                    "use JetPack's TensorRT (pip uninstall tensorrt; python3-libnvinfer from apt)",
                )
            )
    if cuda_python:
        items.append(Item("cuda-python", OK, cuda_python))
    else:
        items.append(
            Item("cuda-python", MISSING, "not installed", "the trt backend needs it: pip install 'edgetl[trt]'")
        )
    return items


def _jetson_items(summary: Optional[Dict[str, Any]]) -> List[Item]:
    if summary is None:
        return []
    if summary["l4t"] is None:
        return [Item("jetson", MISMATCH, "unreadable L4T release", "check /etc/nv_tegra_release")]
    if summary["jetpack"] is None:
        return [
            Item(
                "jetson",
                MISMATCH,
                "L4T {}: not in edgetl's JetPack table".format(summary["l4t"]),
                "use the TensorRT version that imports (edgetl doctor lists it) as --trt-version",
            )
        ]
    text = "L4T {} = JetPack {}, TensorRT {}".format(
        summary["l4t"], summary["jetpack"], summary["jetpack_tensorrt"] or "< 8"
    )
    if summary["jetpack"].startswith("4"):
        return [
            Item("jetson", MISMATCH, text, "JetPack 4 (Python 3.6) is unsupported: flash JetPack 5.1.x or 6.x", True)
        ]
    if summary["trt_version"] is None:
        items = [Item("jetson", MISMATCH, text, "edgetl needs TensorRT >= 8.5: upgrade to JetPack 5.1.x or 6.x", True)]
    else:
        items = [Item("jetson", OK, text + "; export with --trt-version " + summary["trt_version"])]
    if summary["power_mode"]:
        mode = summary["power_mode"]
        detail = "{}{}".format(mode["name"], " (mode {})".format(mode["id"]) if mode["id"] is not None else "")
        clocks = summary["jetson_clocks_active"]
        detail += "; jetson_clocks " + ("active" if clocks else "not active" if clocks is False else "unknown")
        advice = (
            ""
            if clocks
            else "for stable latency figures: sudo nvpmodel -m 0 && sudo jetson_clocks"
            if clocks is False
            else "sudo jetson_clocks --show tells whether the clocks are pinned"
        )
        items.append(Item("power mode", OK, detail, advice))
    elif summary["nvpmodel_present"]:
        items.append(Item("power mode", MISSING, summary["power_mode_error"] or "unreadable", "run: sudo nvpmodel -q"))
    else:
        items.append(Item("power mode", MISSING, "nvpmodel not found", "sudo apt install nvidia-l4t-tools"))
    return items


def _ort_runs(ort: Optional[Dict[str, Any]], provider: str) -> bool:
    run = ((ort or {}).get("runs") or {}).get(provider) or {}
    return run.get("runs_on") == provider and bool(run.get("correct"))


def capability_items(facts: Dict[str, Any]) -> List[Item]:
    """Which export targets and predict backends work here, and why not."""
    torch, trt, ort = facts.get("torch"), facts.get("tensorrt"), facts.get("onnxruntime")
    has_torch = bool(torch and torch.get("version"))
    has_ort = bool(ort and not ort.get("error")) and _ort_runs(ort, CPU_PROVIDER)
    trt_device = bool(trt and trt.get("device"))
    why_trt = (
        "tensorrt is not installed"
        if trt is None
        else trt.get("error") or trt.get("device_error") or "no GPU visible to TensorRT"
        if not trt_device
        else ""
    )
    rows = [
        ("export onnx/fp16/int8", has_torch and has_ort, "needs torch and onnxruntime (export on a workstation)"),
        ("export --trt / build-engine", trt_device, "needs TensorRT with a GPU here: " + why_trt),
        ("predict --backend onnx / onnx-int8", has_ort, "onnxruntime cannot run a session"),
        (
            "predict --backend onnx --device cuda",
            _ort_runs(ort, CUDA_PROVIDER),
            "the CUDA provider does not run",
        ),
        (
            "predict --backend ort-trt",
            _ort_runs(ort, TENSORRT_PROVIDER),
            "ONNX Runtime's TensorRT provider does not run",
        ),
        ("predict --backend torch", has_torch, "torch is not installed"),
        ("predict --backend trt", trt_device, why_trt),
    ]
    return [Item(name, OK if works else MISSING, "works here" if works else why) for name, works, why in rows]


def diagnose(facts: Dict[str, Any]) -> List[Item]:
    """Every item of the report from ``collect_facts()``'s dict (pure)."""
    packages = facts.get("packages", {})
    jetson = jetson_summary(facts.get("jetson"))
    items = [_python_item(facts)] + _package_items(facts) + _provider_items(facts.get("onnxruntime"))
    items.append(_torch_item(facts.get("torch"), packages, jetson is not None))
    items += _tensorrt_items(facts.get("tensorrt"), packages, jetson)
    items += _jetson_items(jetson)
    return items + capability_items(facts)


# --- a bundle on this device ----------------------------------------------------------------------------------


def onnx_opset_ir(path: Path) -> Tuple[int, int]:
    """(default-domain opset, IR version) of an ONNX file, without loading external weights."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    opsets = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    return (max(opsets) if opsets else 0), int(model.ir_version)


def check_target(target: TrtRelease, opset: int, ir_version: int) -> Optional[str]:
    """Why TensorRT ``target`` cannot parse an ONNX of this opset/IR; None when it can."""
    try:
        onnx_versions(target, opset)
    except ConfigError as exc:
        return str(exc)
    if ir_version > target.max_ir_version:
        return "its ONNX IR version {} is newer than TensorRT {}'s parser accepts ({})".format(
            ir_version, target.name, target.max_ir_version
        )
    return None


def bundle_items(
    bundle: Bundle,
    device: Optional[DeviceInfo],
    trt_version: Optional[str],
    device_error: str = "",
    jetpack_tensorrt: Optional[str] = None,
    read_onnx: Callable[[Path], Tuple[int, int]] = onnx_opset_ir,
) -> List[Item]:
    """Whether a bundle's engines were built for this device (sidecars) and its ONNX models parse with the
    TensorRT here (or, without one, JetPack's; else the default --trt-version)."""
    items = []
    for engine in bundle.engines():
        plan = bundle.engine_plan(engine) or {}
        name = "bundle engine " + engine
        if device is None:
            items.append(Item(name, MISSING, "cannot check here: " + (device_error or "no TensorRT/GPU")))
            continue
        onnx_file = bundle.root / plan.get("onnx", "")
        onnx_sha = sha256_file(onnx_file) if plan.get("onnx") and onnx_file.is_file() else None
        problems = sidecar_problems(
            load_sidecar(bundle.root / engine), device, sha256_file(bundle.root / engine), onnx_sha
        )
        if problems:
            items.append(Item(name, MISMATCH, "; ".join(problems), rebuild_hint(plan.get("precision", "fp16")), True))
        else:
            items.append(Item(name, OK, "built for this {} with TensorRT {}".format(device.gpu_name, trt_version)))
    if trt_version:
        against, source = trt_version, "the TensorRT here"
    elif jetpack_tensorrt:
        against, source = jetpack_tensorrt, "this JetPack's TensorRT"
    else:
        against, source = DEFAULT_TRT_RELEASE, "the default --trt-version (no TensorRT here)"
    target = release_for_tensorrt(against)
    for kind in ("fp32", "fp16", "int8", "baked"):
        model: Optional[ModelInfo] = bundle.model(kind)
        if model is None or model.int8_form == "cpu":
            continue  # the CPU INT8 form is for ONNX Runtime, never TensorRT
        name = "bundle " + model.file
        if target is None:
            items.append(Item(name, MISMATCH, "TensorRT {} has no --trt-version row".format(against), "", True))
            continue
        try:
            opset, ir_version = read_onnx(bundle.root / model.file)
        except Exception as exc:  # a corrupt or truncated file
            items.append(Item(name, MISMATCH, "unreadable: {}".format(str(exc).splitlines()[0][:160]), "", True))
            continue
        problem = check_target(target, opset, ir_version)
        detail = "opset {}, IR {} vs TensorRT {} ({})".format(opset, ir_version, target.name, source)
        if problem:
            items.append(
                Item(name, MISMATCH, detail + ": " + problem, "re-export with --trt-version " + target.name, True)
            )
        else:
            items.append(Item(name, OK, detail + ": parses"))
    if not items:
        items.append(Item("bundle", MISSING, "no engines and no ONNX models listed", "run 'edgetl export RUN' first"))
    return items


def check_bundle(path: Path, facts: Dict[str, Any]) -> List[Item]:
    """``bundle_items`` for a bundle folder with this machine's TensorRT and GPU (from ``facts``)."""
    try:
        bundle = Bundle.load(Path(path))
    except EdgetlError as exc:
        return [Item("bundle", MISMATCH, str(exc), "", True)]
    trt = facts.get("tensorrt") or {}
    device = DeviceInfo(**trt["device"]) if trt.get("device") else None
    error = trt.get("device_error") or trt.get("error") or ("tensorrt is not installed" if not trt else "")
    jetson = jetson_summary(facts.get("jetson")) or {}
    items = bundle_items(bundle, device, trt.get("version"), error, jetson.get("jetpack_tensorrt"))
    return items + lineage_items(bundle)


def lineage_items(bundle: Bundle) -> List[Item]:
    """Whether every artifact of the bundle comes from one checkpoint (edgetl.contracts.lineage)."""
    problem = lineage_problem(bundle.root, bundle.manifest)
    if problem:
        return [Item("bundle lineage", MISMATCH, problem, bundle.reexport_hint() + ", which removes the others", True)]
    checkpoint = reference_checkpoint(bundle.root, bundle.manifest)
    if checkpoint is None:
        return []
    return [Item("bundle lineage", OK, f"every artifact from checkpoint {checkpoint[:12]}")]


# --- output ---------------------------------------------------------------------------------------------------


def is_broken(items: Sequence[Item]) -> bool:
    return any(item.broken for item in items)


def format_items(items: Sequence[Item]) -> str:
    width = max(len(item.name) for item in items) if items else 0
    lines = []
    for item in items:
        lines.append("[{:^8}] {:<{}}  {}".format(item.status, item.name, width, item.detail))
        if item.advice:
            lines.append(" " * (12 + width) + "-> " + item.advice)
    verdict = "something edgetl needs is broken (exit 1)" if is_broken(items) else "nothing broken"
    return "\n".join(lines + ["", verdict])


def report_json(items: Sequence[Item], facts: Dict[str, Any]) -> str:
    return json.dumps(
        {"broken": is_broken(items), "items": [item.to_dict() for item in items], "facts": facts},
        indent=2,
        default=str,
    )
