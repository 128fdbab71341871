"""Where and how a run executes: memory, precision, what needs CUDA."""

import ctypes
import subprocess

import pytest
import torch

from fmnist.common import UserError
from fmnist.models import spec
from fmnist.runtime import check_device
from tests.support import PY
from tools import ROOT

MALLOC_PROBE = """
import ctypes, sys
import torch
from fmnist.runtime import keep_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(f, ctypes.c_size_t) for f in ("arena", "ordblks", "smblks", "hblks",
                "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "tuned":
    assert keep_freed_memory()
before = libc.mallinfo2().hblkhd
t = torch.ones(4 << 20)  # 16 MB, far above glibc's default 128 KB mmap threshold
mapped = libc.mallinfo2().hblkhd - before
del t
print(mapped, libc.mallinfo2().fordblks)
"""


@pytest.mark.e2e
@pytest.mark.skipif(not hasattr(ctypes.CDLL(None), "mallinfo2"),
                    reason="needs glibc >= 2.33 (mallinfo2)")
def test_keep_freed_memory_keeps_activation_buffers_in_the_heap():
    def probe(mode):
        out = subprocess.run([PY, "-c", MALLOC_PROBE, mode], check=True, text=True,
                             capture_output=True).stdout.split()
        return int(out[0]), int(out[1])

    mapped, _ = probe("default")
    assert mapped >= 16 << 20  # glibc's default: its own mmap, unmapped again on free
    mapped, free_in_heap = probe("tuned")
    assert mapped == 0 and free_in_heap >= 16 << 20  # from the heap, and kept there


def test_amp_auto_is_bf16_only_on_a_cpu_with_native_bf16(monkeypatch):
    import fmnist.runtime as runtime
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    monkeypatch.setattr(runtime, "cpu_flags", lambda: ["avx2", "avx512f", "avx512_bf16"])
    assert runtime.resolve_amp("auto", cpu) == "bf16"
    assert runtime.resolve_amp("auto", cuda) == "none"
    monkeypatch.setattr(runtime, "cpu_flags", lambda: ["avx2", "amx_bf16"])
    assert runtime.resolve_amp("auto", cpu) == "bf16"
    monkeypatch.setattr(runtime, "cpu_flags", lambda: ["avx2", "avx512f"])
    assert runtime.resolve_amp("auto", cpu) == "none"
    assert runtime.resolve_amp("bf16", cpu) == "bf16"  # asked for: emulated, but honoured


@pytest.mark.parametrize("updates, needle", [
    ({"amp": "fp16"}, "train_lenet.amp: 'fp16' needs a CUDA device, and device 'auto' is "
                      "cpu here; use 'bf16' or 'none'"),
    ({"distributed": {"nproc": 2, "nnodes": 1, "backend": "nccl"}},
     "train_lenet.distributed.backend: 'nccl' needs a CUDA device, and device 'auto' is "
     "cpu here; use 'gloo' or 'auto'"),
])
def test_what_needs_cuda_is_refused_on_another_device(updates, needle):
    s = spec("lenet")
    base = s.load_params(ROOT / "params.yaml").model_dump()
    params = s.params.model_validate({**base, "device": "auto", **updates})
    with pytest.raises(UserError) as err:
        check_device(params, torch.device("cpu"), "params.yaml: train_lenet")
    assert str(err.value) == f"params.yaml: {needle}"
    check_device(params, torch.device("cuda", 0), "params.yaml: train_lenet")  # fine there
    gloo = {**base, **updates, "amp": "none",
            "distributed": {"nproc": 2, "nnodes": 1, "backend": "gloo"}}
    check_device(s.params.model_validate(gloo), torch.device("cpu"), "x")  # no CUDA needed
