"""What the CPU can do, read at run time: the figures of every benchmark and training run
are recorded with it, and training picks BF16 autocast only where the CPU computes BF16
natively.

Example:
    >>> info = cpu_info()
    >>> info["isa"]                     # e.g. ['avx2', 'avx512_bf16', 'avx512_vnni', 'avx512f']
    >>> has_bf16()                      # True on AVX-512 BF16 or AMX hosts
"""

from __future__ import annotations

import os
import platform
from functools import cache
from pathlib import Path

__all__ = ["ISA_FLAGS", "cpu_flags", "cpu_info", "has_bf16"]

#: The instruction-set flags that change the speed of FP32, BF16 and INT8 kernels.
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


@cache
def cpu_flags() -> frozenset[str]:
    """The flags of ``/proc/cpuinfo`` (empty where it cannot be read, e.g. not Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_info() -> dict[str, object]:
    """CPU model, logical cores, the :data:`ISA_FLAGS` it has, OS and Python."""
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu or platform.processor() or platform.machine(),
            "logical_cores": os.cpu_count(),
            "isa": sorted(f for f in cpu_flags() if f in ISA_FLAGS),
            "os": platform.platform(), "python": platform.python_version()}


def has_bf16() -> bool:
    """Whether the CPU has native BF16 arithmetic (AVX-512 BF16 or AMX): without it
    oneDNN emulates BF16 and autocast is slower than FP32."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})
