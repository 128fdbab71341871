"""Where and how a run executes: device, threads, determinism, allocator, process group,
and the launch under torchrun when params ask for more than one process.

Nothing here changes what a model computes, only where and how fast; ``environment()``
records the facts that can still make two machines' bits differ.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from fmnist import numerics as numerics_
from fmnist.common import ERROR_FILE_ENV, UserError, fail
from fmnist.numerics import Numerics
from fmnist.params import RuntimeParams, TrainParams

# The CPU flags of native bf16 arithmetic (AVX512-BF16, AMX), where bf16 matmuls run at
# 2-4x fp32; elsewhere torch emulates bf16, slower than fp32 and with other rounding.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    rank: int = 0
    world: int = 1
    numerics: Numerics = Numerics("native", None, 0)

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


def check_device(params: TrainParams, device: torch.device, where: str) -> None:
    """What needs CUDA (the nccl backend, fp16), checked once against the device a run
    gets, so ``device: auto`` on a machine without CUDA is caught too. ``where`` names
    the section: ``params.yaml: train_lenet``."""
    if device.type == "cuda":
        return
    asked = f"device '{params.device}' is {device.type} here"
    if params.distributed.world > 1 and params.distributed.backend == "nccl":
        raise UserError(f"{where}.distributed.backend: 'nccl' needs a CUDA device, and "
                        f"{asked}; use 'gloo' or 'auto'")
    if params.amp == "fp16":
        raise UserError(f"{where}.amp: 'fp16' needs a CUDA device, and {asked}; use "
                        "'bf16' or 'none'")


def relaunch_under_torchrun(params: TrainParams, runtime: RuntimeParams, where: str,
                            check_inputs: Callable[[], None]) -> int | None:
    """Where params ask for more than one process and this is not one of them yet: run
    this same command under torchrun (PyTorch's launcher) and return its exit code.
    None: run here. What every rank would fail on (the device; the inputs, checked by
    ``check_inputs``) is checked before any process starts."""
    d = params.distributed
    if d.world == 1 or "LOCAL_RANK" in os.environ:
        return None
    check_device(params, resolve_device(params.device), where)
    check_inputs()
    at = f"{runtime.master_addr}:{runtime.master_port}"
    if runtime.node_rank == 0:
        check_port_free(runtime.master_addr, runtime.master_port, where)
    if d.nnodes > 1:
        print(f"node {runtime.node_rank}: waiting for {d.nnodes} nodes to meet at {at} "
              f"(giving up after {runtime.rendezvous_timeout} s: runtime.rendezvous_timeout)",
              flush=True)
    cmd = [sys.executable, "-m", "torch.distributed.run",
           f"--nproc_per_node={d.nproc}", f"--nnodes={d.nnodes}",
           f"--node_rank={runtime.node_rank}", f"--master_addr={runtime.master_addr}",
           f"--master_port={runtime.master_port}",
           f"--rdzv-conf=timeout={runtime.rendezvous_timeout}", *sys.argv]
    return launch(cmd, {"timed out": f"no rendezvous at {at} within "
                                      f"{runtime.rendezvous_timeout} s "
                                      "(runtime.rendezvous_timeout): are all "
                                      f"{d.nnodes} nodes started, with the same "
                                      "runtime.master_addr and master_port?",
                        "address already in use": f"port {runtime.master_port} at "
                                                  f"{runtime.master_addr} is in use: set "
                                                  "runtime.master_port to a free one"})


def check_port_free(addr: str, port: int, where: str) -> None:
    """torchrun's rendezvous port on node 0, probed before it starts (its own failure is
    45 lines long)."""
    import socket

    try:
        infos = socket.getaddrinfo(addr, port, type=socket.SOCK_STREAM)
    except OSError:
        return  # an address this node does not resolve: torchrun says so
    family, _, _, _, sockaddr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(sockaddr)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise UserError(f"{where.split(':')[0]}: runtime.master_port: port {port} "
                                f"at {addr} is in use; set a free one") from None


def launch(cmd: list[str], known: dict[str, str] | None = None) -> int:
    """Run torchrun: the ranks' stdout (the epoch lines) as it comes; their stderr and
    torchrun's held back. A rank that stops on a UserError writes its one line to a
    file, and that line is all that is said (torchrun's multi-line failure summary is
    dropped); so is a failure of torchrun's own that ``known`` names (a phrase of its
    output -> the one line); any other failure shows everything that was held back."""
    with tempfile.TemporaryDirectory(prefix="fmnist-torchrun-") as tmp:
        error_file = Path(tmp) / "error"
        with open(Path(tmp) / "stderr", "w+b") as err:
            code = subprocess.call(cmd, stderr=err,
                                   env={**os.environ, ERROR_FILE_ENV: str(error_file)})
            if error_file.exists():
                fail(error_file.read_text(encoding="utf-8").strip())
            err.seek(0)
            held = err.read().decode("utf-8", "replace")
            for phrase, line in (known or {}).items():
                if code != 0 and phrase in held.lower():
                    fail(line)
            err.seek(0)
            sys.stderr.buffer.write(err.read())
            sys.stderr.flush()
    return code


# mallopt(3) parameter numbers, from glibc's <malloc.h>
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -2, -3, -4


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed activation buffers for reuse; True where it took.

    A training step allocates and frees the same large tensors every time. By default
    glibc serves blocks that large with mmap and hands them back to the kernel on free,
    so each step page-faults and zero-fills fresh pages. Raising the mmap and trim
    thresholds keeps them in the heap (the gain: docs/speed.md), as PyTorch's CPU tuning
    guide gets by preloading jemalloc
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


def pin_numerics(mode: str, threads: int, device: torch.device) -> Numerics:
    """Pin the kernels (``fmnist.numerics``) and the thread count before the process's
    first tensor operation, then ask the libraries what they chose; what did not take
    effect is one warning line, and the run records no tier."""
    chosen = numerics_.pin(mode, threads, device.type)
    if threads:
        torch.set_num_threads(threads)
    torch.set_float32_matmul_precision("highest")
    checked = numerics_.check(chosen)
    if checked.problems and int(os.environ.get("RANK", "0")) == 0:
        print(numerics_.describe_problems(checked), file=sys.stderr)
    return checked


def setup_runtime(params: TrainParams, where: str) -> Runtime:
    """Pin numerics and threads, make kernels deterministic, check what needs CUDA, and
    join the process group under torchrun."""
    keep_freed_memory()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(params.device, local_rank)
    pinned = pin_numerics(params.numerics, params.threads, dev)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    # Deterministic mode also fills every new tensor with NaN, a guard against kernels
    # that read memory they never wrote. No kernel this project runs does (two runs give
    # bit-identical weights, tested), and the fill is one more pass over each buffer.
    torch.utils.deterministic.fill_uninitialized_memory = False
    torch.backends.cudnn.benchmark = False
    check_device(params, dev, where)
    backend = params.distributed.backend
    if world > 1 and not dist.is_initialized():
        if backend == "auto":
            backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=30))
    return Runtime(dev, rank, world, pinned)


def teardown_runtime() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def running(params: TrainParams, where: str) -> Iterator[Runtime]:
    """``setup_runtime`` and, whatever happens, ``teardown_runtime``; ``where`` names
    the params section in errors (``params.yaml: train_lenet``)."""
    rt = setup_runtime(params, where)
    try:
        yield rt
    finally:
        teardown_runtime()


def native_bf16() -> bool:
    """Whether this CPU computes in bf16 natively (see ``NATIVE_BF16_FLAGS``)."""
    return any(f in cpu_flags() for f in NATIVE_BF16_FLAGS)


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
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "amx_tile", *NATIVE_BF16_FLAGS)
    have = numerics_.cpu_flags()
    return [f for f in wanted if f in have]


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
        "numerics": rt.numerics.record(),
        **({"numerics_problems": list(rt.numerics.problems)} if rt.numerics.problems else {}),
    }
