"""What a Jetson is running: its L4T release mapped to JetPack, that JetPack's TensorRT and the
matching ``--trt-version``, the power mode (nvpmodel) and whether jetson_clocks pins the clocks.
Parsing is pure (tested without a Jetson); ``read_jetson`` does the reading. Device side, torch-free."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

from edgetl.errors import ConfigError
from edgetl.trt.plan import TrtRelease, resolve_trt_release

TOOL_TIMEOUT_S = 5.0
NV_TEGRA_RELEASE = Path("/etc/nv_tegra_release")

# --- Jetson: L4T release -> JetPack -> TensorRT -> --trt-version ---------------------------------------------


@dataclass(frozen=True)
class JetPackRelease:
    l4t: Tuple[int, ...]  # (major,) or (major, minor) of the Jetson Linux (L4T) release this row covers
    jetpack: str
    tensorrt: str  # the TensorRT line JetPack ships ("" where edgetl has no row for it)
    python: str


# Jetson Linux (L4T) release -> JetPack and the TensorRT it ships. Sources:
# - JetPack 6.1 and 6.2 ship TensorRT 10.3 (CUDA 12.6, cuDNN 9.3): Torch-TensorRT's JetPack page, which quotes
#   NVIDIA's JetPack release notes (https://pytorch.org/TensorRT/getting_started/jetpack.html and its 6.1
#   version, docs.pytorch.org/TensorRT/v2.6.1/_sources/getting_started/jetpack.rst.txt); JetPack 6.1 is
#   L4T 36.4.0, 6.2 is 36.4.3.
# - JetPack 6.0 DP (L4T 36.2) and 6.0 GA (L4T 36.3) ship TensorRT 8.6.2; JetPack 5.1.x (L4T 35.2-35.6) ships
#   TensorRT 8.5.2; JetPack 5.0.2 (L4T 35.1) ships TensorRT 8.4.1; JetPack 4.x is L4T 32.x with Python 3.6:
#   NVIDIA's JetPack archive and release notes (developer.nvidia.com/embedded/jetpack-archive). The search
#   corpus available when this table was written held no page of NVIDIA's 5.x/6.0 notes to quote: these rows
#   follow the archive as recalled, and only the 6.1/6.2 row was checked against a cited page.
JETPACK_RELEASES = (
    JetPackRelease((32,), "4.x", "", "3.6"),
    JetPackRelease((34,), "5.0 DP", "8.4", "3.8"),
    JetPackRelease((35, 1), "5.0.2", "8.4", "3.8"),
    JetPackRelease((35,), "5.1.x", "8.5", "3.8"),
    JetPackRelease((36, 2), "6.0 DP", "8.6", "3.10"),
    JetPackRelease((36, 3), "6.0", "8.6", "3.10"),
    JetPackRelease((36, 4), "6.1/6.2", "10.3", "3.10"),
)

_NV_TEGRA = re.compile(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*(\d+)(?:\.(\d+))?")
_DPKG_L4T = re.compile(r"^(\d+)\.(\d+)(?:\.(\d+))?")


def parse_nv_tegra_release(text: str) -> Optional[Tuple[int, int, int]]:
    """``"# R36 (release), REVISION: 3.0, GCID: ..."`` -> ``(36, 3, 0)``; None if it is not that format."""
    match = _NV_TEGRA.search(text or "")
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2)), int(match.group(3) or 0)


def parse_l4t_core_version(version: str) -> Optional[Tuple[int, int, int]]:
    """The ``nvidia-l4t-core`` dpkg version ``"36.3.0-20240506102626"`` -> ``(36, 3, 0)``."""
    match = _DPKG_L4T.match((version or "").strip())
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2)), int(match.group(3) or 0)


def jetpack_for_l4t(l4t: Sequence[int]) -> Optional[JetPackRelease]:
    """The table row of an L4T release: an exact (major, minor) row first, else the major row; None: unknown."""
    for key in (tuple(l4t[:2]), tuple(l4t[:1])):
        for row in JETPACK_RELEASES:
            if row.l4t == key:
                return row
    return None


def release_for_tensorrt(version: str) -> Optional[TrtRelease]:
    """The ``--trt-version`` row for a TensorRT version; None where edgetl has none (e.g. 8.4)."""
    try:
        return resolve_trt_release(version)
    except ConfigError:
        return None


def parse_nvpmodel(text: str) -> Optional[Dict[str, Any]]:
    """``nvpmodel -q`` output (``"NV Power Mode: MAXN\\n0"``, maybe after NVPM WARN lines) -> name and id."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if line.startswith("NV Power Mode:"):
            mode: Dict[str, Any] = {"name": line.split(":", 1)[1].strip(), "id": None}
            if i + 1 < len(lines) and lines[i + 1].isdigit():
                mode["id"] = int(lines[i + 1])
            return mode
    return None


_FREQS = re.compile(r"MinFreq=(\d+)\s+MaxFreq=(\d+)")
_OVERRIDE = re.compile(r"FreqOverride=(\d+)")
_JUDGED = re.compile(r"^\s*(cpu\d+:|GPU\s|EMC\s)")


def parse_jetson_clocks(text: str) -> Optional[bool]:
    """``jetson_clocks --show``: active when every online CPU line and the GPU line have MinFreq == MaxFreq and
    the EMC line is locked (``FreqOverride=1``; older outputs without it: MinFreq == MaxFreq); None when the
    output has no CPU, GPU or EMC line. Other engines are not judged: Xavier and Orin list their DLA and PVA
    clocks with MinFreq=0 even while jetson_clocks holds them at their maximum."""
    verdicts = []
    for line in (text or "").splitlines():
        kind = _JUDGED.match(line)
        freqs = _FREQS.search(line)
        if kind is None or freqs is None or "Online=0" in line:
            continue
        override = _OVERRIDE.search(line)
        if kind.group(1).startswith("EMC") and override is not None:
            verdicts.append(override.group(1) == "1")
        else:
            verdicts.append(freqs.group(1) == freqs.group(2))
    return all(verdicts) if verdicts else None


def run_tool(args: Sequence[str], timeout: float = TOOL_TIMEOUT_S) -> Optional[Dict[str, Any]]:
    """Run a command if it is on PATH: ``{"rc", "output"}``; None when it is not installed."""
    if shutil.which(args[0]) is None:
        return None
    try:
        done = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"rc": None, "output": "timed out after {:g} s".format(timeout)}
    except OSError as exc:
        return {"rc": None, "output": str(exc)}
    return {"rc": done.returncode, "output": (done.stdout or "") + (done.stderr or "")}


def read_jetson(release_file: Path = NV_TEGRA_RELEASE) -> Optional[Dict[str, Any]]:
    """L4T release file, nvidia-l4t-core's version and the power-mode tools' output; None when not a Jetson."""
    text = release_file.read_text(errors="replace") if release_file.is_file() else None
    dpkg = run_tool(["dpkg-query", "-W", "-f=${Version}", "nvidia-l4t-core"])
    l4t_core = dpkg["output"].strip() if dpkg and dpkg["rc"] == 0 and dpkg["output"].strip() else None
    if text is None and l4t_core is None:
        return None
    return {
        "nv_tegra_release": text,
        "l4t_core": l4t_core,
        "nvpmodel": run_tool(["nvpmodel", "-q"]),
        "jetson_clocks": run_tool(["jetson_clocks", "--show"]),
    }


def jetson_summary(jetson: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """L4T, JetPack, its TensorRT and --trt-version, power mode and jetson_clocks from ``read_jetson``'s facts."""
    if not jetson:
        return None
    l4t = parse_nv_tegra_release(jetson.get("nv_tegra_release") or "") or parse_l4t_core_version(
        jetson.get("l4t_core") or ""
    )
    row = jetpack_for_l4t(l4t) if l4t else None
    target = release_for_tensorrt(row.tensorrt) if row and row.tensorrt else None
    power = jetson.get("nvpmodel")
    clocks = jetson.get("jetson_clocks")
    return {
        "l4t": ".".join(str(v) for v in l4t) if l4t else None,
        "jetpack": row.jetpack if row else None,
        "jetpack_tensorrt": row.tensorrt if row else None,
        "jetpack_python": row.python if row else None,
        "trt_version": target.name if target else None,
        "power_mode": parse_nvpmodel(power["output"]) if power and power.get("rc") == 0 else None,
        "power_mode_error": None if power is None or power.get("rc") == 0 else power.get("output", "").strip()[:200],
        "nvpmodel_present": power is not None,
        "jetson_clocks_active": parse_jetson_clocks(clocks["output"]) if clocks and clocks.get("rc") == 0 else None,
        "jetson_clocks_present": clocks is not None,
    }
