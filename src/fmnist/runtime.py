"""Where and how a run executes: device, threads, determinism, allocator, process group.

Nothing here changes what a model computes, only where and how fast; ``environment()``
records the facts that can still make two machines' bits differ.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import sys
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from fmnist.common import UserError


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def resolve_device(requested: str, local_rank: int = 0) -> torch.device:
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if requested == "cuda":
        if not torch.cuda.is_available():
            raise UserError("device 'cuda' was asked for, but torch sees no CUDA device")
        return torch.device("cuda", local_rank)
    if requested == "mps" and not torch.backends.mps.is_available():
        raise UserError("device 'mps' was asked for, but it is not available")
    return torch.device(requested)


def check_launch(device: str, backend: str) -> None:
    """What every rank would fail on, checked once before torchrun starts any: the
    device must exist, and nccl needs CUDA."""
    dev = resolve_device(device)
    if backend == "nccl" and dev.type != "cuda":
        raise UserError(f"distributed.backend 'nccl' needs a CUDA device, and device "
                        f"'{device}' is not one here; use 'gloo' or 'auto'")


# mallopt(3) parameter numbers, from glibc's <malloc.h>
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -2, -3, -4


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed activation buffers for reuse; True where it took.

    A training step allocates and frees the same large tensors every time. By default
    glibc serves blocks that large with mmap and hands them back to the kernel on free,
    so each step page-faults and zero-fills fresh pages: about a sixth of LeNet's CPU
    step. Raising the mmap and trim thresholds keeps them in the heap (LeNet +15-25%,
    AlexNet +10%, measured), as PyTorch's CPU tuning guide gets by preloading jemalloc
    or tcmalloc. Blocks over glibc's largest threshold (32 MiB: the AlexNet's 4096x4096
    gradient is 64 MiB) would still be mapped afresh each step, so mmap is off
    altogether. It changes no result, only where memory comes from.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in (
        (_M_MMAP_THRESHOLD, 32 << 20),   # glibc's maximum
        (_M_MMAP_MAX, 0),                # nothing mapped: every block is reused
        (_M_TRIM_THRESHOLD, 1 << 30),
        (_M_TOP_PAD, 64 << 20)))


def setup_runtime(device: str, threads: int, backend: str = "auto") -> Runtime:
    """Pin threads, make kernels deterministic, join the process group under torchrun."""
    keep_freed_memory()
    if threads:
        torch.set_num_threads(threads)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    # Deterministic mode also fills every new tensor with NaN, a guard against kernels
    # that read memory they never wrote. No kernel this project runs does (two runs give
    # bit-identical weights, tested), and the fill is one more pass over each buffer.
    torch.utils.deterministic.fill_uninitialized_memory = False
    torch.backends.cudnn.benchmark = False
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world > 1 and not dist.is_initialized():
        if backend == "auto":
            backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=30))
    return Runtime(dev, rank, world, local_rank)


def teardown_runtime() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def native_bf16() -> bool:
    """Whether this CPU computes in bf16 natively (AVX512-BF16 or AMX), where bf16 matmuls
    run at 2-4x fp32; elsewhere torch emulates it, slower than fp32."""
    return any(f in cpu_flags() for f in ("avx512_bf16", "amx_bf16"))


def resolve_amp(amp: str, device: torch.device) -> str:
    """``auto`` -> ``bf16`` on a CPU with native bf16, else ``none``. On GPUs it stays
    ``none``: for networks this small bf16 did not pay on an H100 (fp32 convolutions
    already run in TF32 there), see docs/experiments.md."""
    if amp != "auto":
        return amp
    return "bf16" if device.type == "cpu" and native_bf16() else "none"


def autocast(device: torch.device, amp: str):
    if amp == "none":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The ISA extensions that decide which kernels torch picks (and so the bits)."""
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return [f for f in wanted if f in have]
    except OSError:
        pass
    return []


def environment(rt: Runtime) -> dict[str, object]:
    """What the bits of a run depend on beyond its code, data and params."""
    return {
        "torch": str(torch.__version__),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "threads": torch.get_num_threads(),
        "device": rt.device.type,
        "gpu": torch.cuda.get_device_name(rt.device) if rt.device.type == "cuda" else None,
        "world_size": rt.world,
    }
