"""TensorRT's INT8 calibration cache: the text a TensorRT calibrator hands back instead of calibrating
(``IInt8Calibrator.read_calibration_cache``), read by DeepStream's ``int8-calib-file``, ``trtexec --calib``
and DLA builds. edgetl writes it from the scales of its Q/DQ calibration, so every consumer quantizes
with the scales the accuracy gate judged.

Format, as TensorRT writes it and as onnxruntime's TensorRT provider and NVIDIA's qdq-translator
(Deep-Learning-Accelerator-SW) read and write it: a header line ``TRT-<version>-EntropyCalibration2``,
then one ``<tensor>: <hex>`` line per activation tensor, ``<hex>`` being the IEEE-754 bits of the
float32 scale (dynamic range / 127) as a big-endian hex number. ``<version>`` is NV_TENSORRT_VERSION
of the TensorRT that reads the cache (8.x: major*1000 + minor*100 + patch; 10+: major*10000 + ...):
TensorRT refuses a cache whose header names another release, so the header is set on the device
(``build_engine.sh``, ``set_calibration_version.sh``, or ``stamped`` in memory by edgetl's own build).
Torch-free, Python 3.8.
"""

from __future__ import annotations

import re
import shlex
import struct
from pathlib import Path
from typing import Dict, List, Mapping, Sequence, Tuple

from edgetl.core.fileio import atomic_write_text
from edgetl.errors import ConfigError
from edgetl.spec.engine_sidecar import version_tuple

CALIBRATOR = "EntropyCalibration2"  # the name TensorRT's IInt8EntropyCalibrator2 (and trtexec's) expects
_HEADER = re.compile(r"^TRT-(\d+)-(\w+)$")


def tensorrt_version_number(version: str) -> int:
    """NV_TENSORRT_VERSION of a TensorRT version string: ``"8.6.2.3"`` -> 8602, ``"10.3.0.30"`` -> 100300."""
    numbers = version_tuple(version)
    if not numbers:
        raise ConfigError("not a TensorRT version: {!r}".format(version))
    major, minor, patch = (list(numbers) + [0, 0])[:3]
    return major * (10000 if major >= 10 else 1000) + minor * 100 + patch


def scale_hex(scale: float) -> str:
    """The cache's spelling of a scale: its float32 bits, big-endian, as 8 hex digits."""
    return struct.pack(">f", scale).hex()


def format_cache(scales: Mapping[str, float], version: int) -> str:
    """The cache text for ``scales`` (tensor name -> float32 scale), in the given order."""
    for name, scale in scales.items():
        if not name or ":" in name or "\n" in name:
            raise ConfigError("tensor name {!r} cannot be written to a TensorRT calibration cache".format(name))
        if not scale > 0:
            raise ConfigError("tensor {} has scale {}; a calibration scale must be > 0".format(name, scale))
    lines = ["TRT-{}-{}".format(version, CALIBRATOR)]
    lines += ["{}: {}".format(name, scale_hex(scale)) for name, scale in scales.items()]
    return "\n".join(lines) + "\n"


def parse_cache(text: str) -> Tuple[int, Dict[str, float]]:
    """(header version, tensor -> float32 scale) of a cache; ConfigError naming the first bad line."""
    lines = text.splitlines()
    match = _HEADER.match(lines[0].strip()) if lines else None
    if match is None or match.group(2) != CALIBRATOR:
        raise ConfigError("not a TensorRT {} calibration cache (header {!r})".format(CALIBRATOR, lines[:1]))
    scales = {}  # type: Dict[str, float]
    for number, line in enumerate(lines[1:], start=2):
        name, sep, value = line.rpartition(": ")
        if not sep or not re.match(r"^[0-9a-fA-F]{1,8}$", value) or name in scales:
            raise ConfigError("calibration cache line {} is not '<tensor>: <hex>': {!r}".format(number, line))
        scales[name] = struct.unpack(">f", bytes.fromhex(value.zfill(8)))[0]
    return int(match.group(1)), scales


def stamped(text: str, version: int) -> str:
    """The cache with its header naming TensorRT ``version`` (NV_TENSORRT_VERSION)."""
    parse_cache(text)
    rest = text.partition("\n")[2]
    return "TRT-{}-{}\n{}".format(version, CALIBRATOR, rest)


def write_cache(path: Path, scales: Mapping[str, float], version: int) -> None:
    atomic_write_text(Path(path), format_cache(scales, version))


def stamp_script_lines(caches: Sequence[str]) -> List[str]:
    """sh lines that set each calibration cache's header to this device's TensorRT (NV_TENSORRT_VERSION):
    from Python's tensorrt, else from NvInferVersion.h (JetPack's libnvinfer-dev; from TensorRT 10.11 its
    NV_TENSORRT_MAJOR/MINOR/PATCH name TRT_*_ENTERPRISE macros, resolved here); ``$PYTHON`` must be set."""
    quoted = " ".join(shlex.quote(c) for c in caches)
    return [
        "# A calibration cache names the TensorRT that reads it (TRT-<NV_TENSORRT_VERSION>-EntropyCalibration2):",
        "# set it to this device's, from Python's tensorrt or NvInferVersion.h.",
        "trt_version_number() {",
        '  "$PYTHON" -c \'import tensorrt as t; m, n, p = (int(x) for x in t.__version__.split(".")[:3]); '
        "print(m * (10000 if m >= 10 else 1000) + n * 100 + p)' 2>/dev/null && return",
        "  for h in ${NVINFER_VERSION_H:-/usr/include/*/NvInferVersion.h /usr/include/NvInferVersion.h}; do",
        '    [ -f "$h" ] || continue',
        "    set --",
        "    for part in MAJOR MINOR PATCH; do  # from 10.11: #define NV_TENSORRT_MAJOR TRT_MAJOR_ENTERPRISE",
        '      v=$(sed -n "s/^#define NV_TENSORRT_$part \\([A-Za-z0-9_]*\\).*/\\1/p" "$h")',
        '      case "$v" in [0-9]*) ;; ?*) v=$(sed -n "s/^#define $v \\([0-9][0-9]*\\).*/\\1/p" "$h") ;; esac',
        '      set -- "$@" $v',
        "    done",
        "    [ $# -eq 3 ] && echo $(( $1 * ($1 >= 10 ? 10000 : 1000) + $2 * 100 + $3 )) && return",
        "  done",
        "  return 1",
        "}",
        'TRT_VERSION="$(trt_version_number)" || { echo "cannot tell this device\'s TensorRT version" >&2; exit 1; }',
        "for cache in {}; do".format(quoted),
        '  sed -i "1s/^TRT-[0-9]*-/TRT-$TRT_VERSION-/" "$cache"',
        "done",
    ]
