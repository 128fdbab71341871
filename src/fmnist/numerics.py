"""Portable numerics: the same params, data and thread count give the same bits on every
CPU of a tier, whoever made it.

PyTorch's CPU kernels come from three libraries that each choose code by the machine:
oneMKL picks its fp32 SGEMM and vector math by CPU *vendor* (only its ``COMPATIBLE``
branch is the same code on Intel and AMD, and only with a fixed thread count); oneDNN
picks convolutions and bf16 matmuls by ISA (AMX sums bf16 products in another order than
AVX512-BF16) and blocks them by cache size and thread count; ATen's own vector kernels
are compiled per ISA and picked by ``ATEN_CPU_CAPABILITY``. ``portable`` pins all of
them to one code path per tier, through the environment variables the libraries read
when they first run (so ``pin`` must come before the process's first tensor operation),
and ``check`` then asks each library what it actually chose. ``native`` leaves every
choice to the libraries: faster on some hosts, and the same bits only on the same kind
of CPU. What each tier covers and what it costs: docs/numerics.md.

This module imports no torch at import time: stages call ``pin`` before any kernel runs.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

MODES = ("portable", "native")


@dataclass(frozen=True)
class Tier:
    """CPUs that share one code path in ``portable`` mode, so their bits are equal."""

    name: str
    needs: tuple[str, ...]  # /proc/cpuinfo flags
    onednn_isa: str         # ONEDNN_MAX_CPU_ISA
    aten: str               # ATEN_CPU_CAPABILITY
    aten_reads: str         # what torch.backends.cpu.get_cpu_capability() then says
    onednn_reads: str       # a word of oneDNN's verbose "isa:" line under the cap


# Best first. Tier 1 is every x86-64 CPU with AVX-512 and AVX512-BF16: AMD Zen 4 and
# later, Intel Cooper Lake and later (an AMX Xeon is held to the same kernels, AMX off).
# Tier 2 is every x86-64 CPU with AVX2 and FMA, fp32 only (bf16 is not native there).
TIERS = (
    Tier("x86-64-avx512-bf16",
         ("avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni", "avx512_bf16"),
         "AVX512_CORE_BF16", "avx512", "AVX512", "bfloat16"),
    Tier("x86-64-avx2", ("avx2", "fma"), "AVX2", "avx2", "AVX2", "AVX2"),
)
# A developer's override, to check a lower tier's bits on a higher tier's host
TIER_ENV = "FMNIST_NUMERICS_TIER"
# MKL's name for its COMPATIBLE branch in mkl_cbwr_get (mkl_service.h: MKL_CBWR_COMPATIBLE)
MKL_CBWR_COMPATIBLE = 3


def cpu_flags() -> set[str]:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def tier_of(flags: set[str], machine: str | None = None) -> Tier | None:
    """The best tier this CPU is in, or None (ARM, an x86-64 CPU without AVX2)."""
    if (machine or platform.machine()) not in ("x86_64", "AMD64"):
        return None
    wanted = os.environ.get(TIER_ENV)
    for tier in TIERS:
        if set(tier.needs) <= flags and (not wanted or wanted == tier.name):
            return tier
    return None


def environment(tier: Tier, threads: int) -> dict[str, str]:
    """The variables that pin ``tier``'s kernels at ``threads`` threads."""
    return {
        "MKL_CBWR": "COMPATIBLE",          # MKL's one vendor-independent branch
        "MKL_DYNAMIC": "FALSE",            # ... which holds only at a fixed thread count
        "MKL_NUM_THREADS": str(threads),
        "OMP_NUM_THREADS": str(threads),
        "ONEDNN_MAX_CPU_ISA": tier.onednn_isa,
        "ONEDNN_DEFAULT_FPMATH_MODE": "STRICT",  # fp32 stays fp32: no implicit bf16/tf32
        "ATEN_CPU_CAPABILITY": tier.aten,
    }


@dataclass(frozen=True)
class Numerics:
    """What a run's bits were made with: recorded in meta.json and the timings."""

    mode: str
    tier: str | None  # the tier's name; None: no bitwise promise beyond this kind of CPU
    threads: int
    problems: tuple[str, ...] = ()  # what did not take effect (portable mode only)

    def record(self) -> dict[str, object]:
        return {"mode": self.mode, "tier": self.tier, "threads": self.threads}


def pin(mode: str, threads: int, device: str = "cpu") -> Numerics:
    """Set the environment for ``mode`` before the first tensor operation of the process.

    ``portable`` on a CPU of a tier: the tier's variables; elsewhere (a GPU, ARM, a CPU
    outside every tier) nothing can be promised and the tier is None. ``native``: only
    the thread count, which every mode pins."""
    if mode not in MODES:
        raise ValueError(f"numerics: {mode!r} is not one of {', '.join(MODES)}")
    tier = tier_of(cpu_flags()) if mode == "portable" and device == "cpu" else None
    if tier is not None:
        if threads < 1:
            raise ValueError("numerics: portable needs a fixed thread count (threads >= 1)")
        os.environ.update(environment(tier, threads))
    return Numerics(mode, tier.name if tier else None, threads)


def _libtorch_cpu() -> ctypes.CDLL | None:
    import torch

    path = Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"
    try:
        return ctypes.CDLL(str(path)) if path.exists() else None
    except OSError:
        return None


def _onednn_isa_line() -> str:
    """oneDNN's own statement of the ISA it dispatches to (its verbose "isa:" line),
    from a tiny bf16 convolution; empty where oneDNN printed none."""
    import torch

    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile() as out:
        os.dup2(out.fileno(), 1)
        try:
            with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON), \
                    torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
                torch.nn.functional.conv2d(torch.ones(1, 16, 8, 8), torch.ones(16, 16, 3, 3))
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)
        out.seek(0)
        text = out.read().decode("utf-8", "replace")
    return next((line.split("isa:", 1)[1] for line in text.splitlines() if ",isa:" in line), "")


def check(numerics: Numerics) -> Numerics:
    """Ask each library what it chose; ``problems`` names what did not take effect (set
    too late: after the process's first tensor operation, or overridden)."""
    import torch

    problems = []
    if torch.get_num_threads() != numerics.threads and numerics.threads:
        problems.append(f"threads {torch.get_num_threads()}, not {numerics.threads}")
    tier = next((t for t in TIERS if t.name == numerics.tier), None)
    if tier is not None:
        aten = torch.backends.cpu.get_cpu_capability()
        if aten != tier.aten_reads:
            problems.append(f"ATen's kernels are {aten}, not {tier.aten_reads}")
        lib = _libtorch_cpu()
        if lib is not None and hasattr(lib, "mkl_serv_cbwr_get"):
            branch = lib.mkl_serv_cbwr_get(1)
            if branch != MKL_CBWR_COMPATIBLE:
                problems.append(f"MKL's branch is {branch}, not COMPATIBLE "
                                f"({MKL_CBWR_COMPATIBLE})")
        isa = _onednn_isa_line()
        if isa and (tier.onednn_reads not in isa or "AMX" in isa):
            problems.append(f"oneDNN runs {isa.strip()!r}, not {tier.onednn_isa}")
        if torch.get_float32_matmul_precision() != "highest":
            problems.append(f"float32 matmul precision is "
                            f"{torch.get_float32_matmul_precision()!r}, not 'highest'")
    return Numerics(numerics.mode, numerics.tier if not problems else None,
                    numerics.threads, tuple(problems))


def describe_problems(numerics: Numerics) -> str:
    """The one warning line for a portable run whose pins did not take."""
    return ("warning: numerics: portable settings did not take effect ("
            + "; ".join(numerics.problems) + "): this run's bits are this machine's only")
