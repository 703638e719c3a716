"""The CPU's instruction-set features that decide which int8 and bf16 kernels are fast.

    from optc.backends.cpu_features import cpu_features, describe
    cpu_features().vnni        # u8 x s8 dot products in one instruction (AVX512-VNNI / AVX-VNNI)
    describe()                 # "x86_64 AVX2 FMA, no AVX-512, no VNNI, no BF16, no AMX"

Read from ``/proc/cpuinfo``'s ``flags`` line (Linux, x86). Elsewhere (macOS, Windows, ARM,
containers without /proc) torch's own detection (``torch.backends.cpu.get_cpu_capability()``:
``DEFAULT``, ``AVX2``, ``AVX512``, ...) gives the vector width; what it cannot tell is reported
as unknown (None), never assumed.

Why it matters: ONNX Runtime's int8 GEMMs (``MatMulInteger``, ``DynamicQuantizeMatMul``,
``QAttention``) multiply uint8 activations by int8 weights. With VNNI (``vpdpbusd``) the
products are summed in int32 exactly; without it (AVX2 ``vpmaddubsw``) pairs of products are
summed in saturating int16, so 8-bit weights can overflow: optc's ``quantize`` stores 7-bit
weights by default (exact everywhere) and ``bits=8`` is for VNNI/AMX CPUs. Both optc's int8
ONNX and the fused route's multiply u8 activations by s8 weights
(:func:`optc.tools.bench.fused_route.int8_operand_types`), the operands ORT's VNNI kernels take; ORT
picks those kernels at run time, so the same file uses VNNI where the CPU has it.

bf16 matmuls are fast only with AVX512_BF16 or AMX: on an AVX2 machine without them (loaded),
a MiniLM FFN-shaped linear (128 x 384 by 384 x 1536, torch, one thread) took 44.7 ms in bf16
against 7.2 ms in fp32, so no bf16 precision is offered from here (not measured on a BF16 CPU).
"""

from __future__ import annotations

import functools
import platform
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CpuFeatures", "cpu_features", "describe", "parse_flags"]

_CPUINFO = Path("/proc/cpuinfo")


@dataclass(frozen=True)
class CpuFeatures:
    """What the CPU supports; None where it could not be found out."""

    machine: str
    """``platform.machine()``: x86_64, aarch64, arm64, ..."""
    source: str
    """Where the flags came from: ``/proc/cpuinfo`` or ``torch`` (capability only)."""
    avx2: bool | None
    fma: bool | None
    avx512f: bool | None
    vnni: bool | None
    """AVX512_VNNI or AVX_VNNI: one-instruction u8 x s8 -> int32 dot products."""
    avx512_bf16: bool | None
    amx: bool | None
    """AMX tiles (amx_tile with amx_int8 or amx_bf16)."""

    @property
    def bf16(self) -> bool | None:
        """Whether bf16 matmuls run on native instructions (AVX512_BF16 or AMX_BF16)."""
        if self.avx512_bf16 is None and self.amx is None:
            return None
        return bool(self.avx512_bf16 or self.amx)


def parse_flags(flags: set[str], machine: str, source: str = "/proc/cpuinfo") -> CpuFeatures:
    """:class:`CpuFeatures` from a set of ``/proc/cpuinfo`` flag names."""
    return CpuFeatures(
        machine=machine, source=source,
        avx2="avx2" in flags, fma="fma" in flags, avx512f="avx512f" in flags,
        vnni=bool({"avx512_vnni", "avx_vnni", "avx512vnni"} & flags),
        avx512_bf16="avx512_bf16" in flags,
        amx="amx_tile" in flags and bool({"amx_int8", "amx_bf16"} & flags),
    )


def _from_torch(machine: str) -> CpuFeatures:
    try:
        import torch

        cap = str(torch.backends.cpu.get_cpu_capability()).upper()
    except (ImportError, AttributeError, RuntimeError):
        cap = ""
    wide = cap.startswith("AVX512")
    known = cap.startswith(("AVX2", "AVX512"))
    return CpuFeatures(machine=machine, source=f"torch ({cap or 'unknown'})",
                       avx2=True if known else None, fma=True if known else None,
                       avx512f=True if wide else (False if cap.startswith("AVX2") else None),
                       vnni=True if cap == "AVX512_VNNI" else None, avx512_bf16=None, amx=None)


@functools.cache
def cpu_features(cpuinfo: Path = _CPUINFO) -> CpuFeatures:
    """The features of this machine's CPU (the first processor's flags; they are alike)."""
    machine = platform.machine() or "unknown"
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return _from_torch(machine)
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return parse_flags(set(value.split()), machine, str(cpuinfo))
    return _from_torch(machine)


def describe(features: CpuFeatures | None = None) -> str:
    """One line: ``x86_64 AVX2 FMA AVX-512 VNNI, no BF16, no AMX (/proc/cpuinfo)``."""
    f = features or cpu_features()
    parts = [f.machine]
    for label, value in (("AVX2", f.avx2), ("FMA", f.fma), ("AVX-512", f.avx512f),
                         ("VNNI", f.vnni), ("BF16", f.bf16), ("AMX", f.amx)):
        if value is None:
            parts.append(f"{label}?")
        else:
            parts.append(label if value else f"no {label}")
    return " ".join(parts) + f" ({f.source})"
