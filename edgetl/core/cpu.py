"""Which CPU instruction set an INT8 model meets. ONNX Runtime's integer kernels differ by ISA: on
x86 without VNNI the u8 x s8 kernels (VPMADDUBSW) can saturate, VNNI's VPDPBUSD cannot, and ARM's
dot-product kernels take signed inputs. Read from /proc/cpuinfo; torch-free, Python 3.8."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import FrozenSet, Optional

CPU_ISAS = ("vnni", "avx2", "arm64")
_VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni"})


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> FrozenSet[str]:
    """The feature flags of the first CPU (x86 ``flags``, ARM ``Features``); empty where unreadable."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            return frozenset(value.split())
    return frozenset()


def cpu_isa(flags: Optional[FrozenSet[str]] = None, machine: Optional[str] = None) -> str:
    """``vnni`` (x86 with AVX-512 VNNI or AVX-VNNI), ``avx2`` (any other x86) or ``arm64``."""
    machine = (machine or platform.machine()).lower()
    if machine in ("aarch64", "arm64"):
        return "arm64"
    return "vnni" if (cpu_flags() if flags is None else flags) & _VNNI_FLAGS else "avx2"


def isa_flags_of_interest(flags: Optional[FrozenSet[str]] = None) -> list:
    """The flags that decide INT8 kernels, for reports and benchmark machine info."""
    flags = cpu_flags() if flags is None else flags
    return sorted(f for f in flags if f in _VNNI_FLAGS | {"avx2", "avx512f", "avx512bw", "asimddp", "i8mm"})
