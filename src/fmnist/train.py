"""Training: seeding and determinism, the epoch loop, checkpoints and resume, curves.

One code path from a laptop CPU to several GPUs: run plainly it is a single process;
under ``torchrun`` (which ``stages/train.py`` launches itself when params ask for more
than one process) every rank trains on a disjoint shard of each epoch inside
DistributedDataParallel, and only rank 0 writes anything.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from fmnist.common import UserError, write_json, write_text
from fmnist.data import (
    Split,
    Stats,
    epoch_order,
    eval_batches,
    load_split,
    load_stats,
    save_torch,
    train_batches,
)
from fmnist.models import build_model, count_parameters, spec
from fmnist.params import TrainParams, validate

CURVE_FIELDS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr",
                "seconds")
_CODE_FILES = ("data.py", "models.py", "train.py")


# ---------------------------------------------------------------- runtime


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


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


# mallopt(3) parameter numbers, from glibc's <malloc.h>
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed activation buffers for reuse; True where it took.

    A training step allocates and frees the same large tensors every time (LeNet's first
    activation is 3.5 MB at batch 256, the AlexNet's 13 MB). By default glibc serves
    blocks that large with mmap and hands them back to the kernel on free, so each step
    page-faults and zero-fills fresh pages: about a sixth of LeNet's CPU step. Raising
    the mmap and trim thresholds keeps them in the heap (LeNet +15-25%, AlexNet +10%,
    measured). PyTorch's CPU tuning guide gets the same by preloading jemalloc or
    tcmalloc; this needs no extra library. It changes no result, only where memory
    comes from.
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
        (_M_TRIM_THRESHOLD, 1 << 30),
        (_M_TOP_PAD, 64 << 20)))


def setup_runtime(device: str, threads: int, backend: str = "auto") -> Runtime:
    """Pin threads, make kernels deterministic, join the process group under torchrun."""
    keep_freed_memory()
    if threads:
        torch.set_num_threads(threads)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
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
        dist.init_process_group(backend=backend)
    return Runtime(dev, rank, world, local_rank)


def teardown_runtime() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


# ---------------------------------------------------------------- fingerprint


def _sha256_files(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.name.encode())
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def fingerprint(name: str, params: TrainParams, prepared: Path, world: int) -> dict[str, str]:
    """What a saved training state must match to be resumed: params, code and data."""
    pkg = Path(__file__).parent
    return {
        "params": hashlib.sha256(json.dumps(
            {"model": name, "world": world, **params.model_dump(exclude={"resume"})},
            sort_keys=True).encode()).hexdigest(),
        "code": _sha256_files([pkg / f for f in _CODE_FILES]),
        "data": _sha256_files([prepared / f for f in ("train.pt", "val.pt", "stats.json")]),
    }


# ---------------------------------------------------------------- pieces of the loop


def make_optimizer(model: nn.Module, p: TrainParams,
                   device: torch.device) -> torch.optim.Optimizer:
    # The fused kernels update all parameters in one pass: on the CPU they take the
    # AdamW step of the 22M-parameter AlexNet from about a quarter of the step time to
    # a few per cent. Same update rule, same results run to run.
    fused = device.type in ("cpu", "cuda") or None
    if p.optimizer == "adam":  # L2 added to the gradient, as the write-up's Keras code did
        return torch.optim.Adam(model.parameters(), lr=p.lr, weight_decay=p.weight_decay,
                                fused=fused)
    if p.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=p.lr, weight_decay=p.weight_decay,
                                 fused=fused)
    return torch.optim.SGD(model.parameters(), lr=p.lr, momentum=p.momentum,
                           nesterov=p.momentum > 0, weight_decay=p.weight_decay, fused=fused)


def make_scheduler(opt: torch.optim.Optimizer, p: TrainParams,
                   total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    if p.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=p.lr, total_steps=total_steps, pct_start=max(p.warmup, 1e-3),
            cycle_momentum=p.optimizer == "sgd")
    if p.schedule == "cosine":
        warm = int(p.warmup * total_steps)

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            t = (step - warm) / max(1, total_steps - warm)
            return 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
        return torch.optim.lr_scheduler.LambdaLR(opt, factor)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)


def make_average(model: nn.Module, decay: float) -> AveragedModel | None:
    """An exponential moving average of ``model``'s weights, or None where decay is 0.

    Updated after every optimizer step as ``avg = decay * avg + (1 - decay) * weights``,
    starting from a copy of the first step's weights. Its weights are the ones a run
    validates and saves; the optimizer keeps stepping the raw ones.
    """
    if not decay:
        return None
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def autocast(device: torch.device, amp: str):
    if amp == "none":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def predict_logits(model: nn.Module, split: Split, stats: Stats | None, batch_size: int,
                   device: torch.device, amp: str = "none") -> torch.Tensor:
    """Logits (float32, on the CPU) for every image of ``split``, in order."""
    model.eval()
    out = []
    for x, _ in eval_batches(split, batch_size, stats):
        with autocast(device, amp):
            out.append(model(x.to(device, non_blocking=True)).float().cpu())
    return torch.cat(out) if out else torch.empty(0, 10)


def loss_and_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    if len(labels) == 0:
        return float("nan"), float("nan")
    loss = nn.functional.cross_entropy(logits, labels).item()
    return loss, (logits.argmax(1) == labels).float().mean().item()


def write_curves(path: Path, history: list[dict[str, float]]) -> None:
    lines = ["\t".join(CURVE_FIELDS)]
    for row in history:
        lines.append("\t".join(f"{row[k]:.6g}" if isinstance(row[k], float) else str(row[k])
                               for k in CURVE_FIELDS))
    write_text(path, "\n".join(lines) + "\n")


def cpu_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict with every tensor on the CPU, so that a plain
    ``torch.load`` of a GPU-trained model works on a machine without one."""
    state = model.state_dict()
    for k, v in state.items():  # in place: the dict keeps its type and _metadata
        state[k] = v.cpu()
    return state


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


# ---------------------------------------------------------------- the loop


@dataclass
class Trainer:
    """The model and everything one optimization step needs."""

    model: nn.Module
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    criterion: nn.Module
    device: torch.device
    amp: str
    average: AveragedModel | None = None

    @property
    def result(self) -> nn.Module:
        """The weights a run ends with: the moving average where there is one."""
        return self.average.module if self.average is not None else _unwrap(self.model)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimization step on a batch; returns the (detached) loss and logits."""
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        with autocast(self.device, self.amp):
            logits = self.model(x)
            loss = self.criterion(logits.float(), y)
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        self.sched.step()
        if self.average is not None:
            self.average.update_parameters(_unwrap(self.model))
        return loss.detach(), logits.detach()


def make_trainer(name: str, arch: Any, params: TrainParams, device: torch.device,
                 total_steps: int) -> Trainer:
    torch.manual_seed(params.seed)
    model = spec(name).build(arch).to(device, memory_format=torch.channels_last)
    opt = make_optimizer(model, params, device)
    return Trainer(model, opt, make_scheduler(opt, params, total_steps),
                   torch.amp.GradScaler(device.type, enabled=params.amp == "fp16"),
                   nn.CrossEntropyLoss(label_smoothing=params.label_smoothing),
                   device, params.amp, make_average(model, params.ema))


def train(name: str, params: TrainParams, prepared: str | Path, out_dir: str | Path,
          state_path: str | Path, curves_path: str | Path, section: str | None = None,
          rt: Runtime | None = None) -> dict[str, Any]:
    """Train model ``name``; write ``out_dir``/model.pt and meta.json; return the meta."""
    section = section or f"train_{name}"
    prepared, out_dir = Path(prepared), Path(out_dir)
    state_path, curves_path = Path(state_path), Path(curves_path)
    arch = validate(spec(name).arch, params.arch, f"{section}.arch")
    rt = rt or setup_runtime(params.device, params.threads, params.distributed.backend)
    if params.amp == "fp16" and rt.device.type != "cuda":
        raise UserError(f"params.yaml: {section}.amp: 'fp16' needs a CUDA device; "
                        "use 'bf16' or 'none' on the CPU")
    if params.batch_size % rt.world:
        raise UserError(f"params.yaml: {section}.batch_size: {params.batch_size} does not "
                        f"divide among {rt.world} processes")

    train_split, val_split = load_split(prepared, "train"), load_split(prepared, "val")
    stats = load_stats(prepared) if params.normalize else None

    local_batch = params.batch_size // rt.world
    shard = len(train_split) // rt.world
    steps_per_epoch = math.ceil(shard / local_batch)
    t = make_trainer(name, arch, params, rt.device, params.epochs * steps_per_epoch)
    model, opt, sched, scaler = t.model, t.opt, t.sched, t.scaler
    n_params = count_parameters(model)

    fp = fingerprint(name, params, prepared, rt.world)
    start_epoch, history, elapsed, step_seconds = 0, [], 0.0, 0.0
    if params.resume and state_path.exists():
        state = torch.load(state_path, weights_only=True, map_location=rt.device)
        stale = [k for k in fp if state.get("fingerprint", {}).get(k) != fp[k]]
        if stale:
            if rt.main:
                print(f"{name}: saved state in {state_path} was made from other "
                      f"{', '.join(stale)}; training from scratch")
        else:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
            if t.average is not None:
                t.average.load_state_dict(state["average"])
            start_epoch, history = state["epoch"], state["history"]
            elapsed, step_seconds = state["elapsed"], state["step_seconds"]
            if rt.main:
                print(f"{name}: resuming after epoch {start_epoch} of {params.epochs}")

    if rt.world > 1:
        model = t.model = nn.parallel.DistributedDataParallel(
            model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)

    aug = params.augment
    acc_dtype = torch.float32 if rt.device.type == "mps" else torch.float64  # MPS has no f64
    for epoch in range(start_epoch, params.epochs):
        t0 = time.perf_counter()
        # Every random draw of an epoch comes from (seed, epoch, rank): resume needs no
        # RNG state, and a resumed run repeats exactly what the uninterrupted one did.
        torch.manual_seed(params.seed * 1_000_003 + epoch * 1009 + rt.rank)
        gen = torch.Generator().manual_seed(params.seed * 7919 + epoch * 104_729 + rt.rank)
        order = epoch_order(len(train_split), params.seed, epoch, rt.rank, rt.world)[:shard]
        model.train()
        # The running sums stay on the device: reading them back every step would make
        # the host wait for each GPU step before it can prepare the next batch.
        loss_sum = torch.zeros((), dtype=acc_dtype, device=rt.device)
        correct = torch.zeros((), dtype=torch.int64, device=rt.device)
        seen = 0
        bar = tqdm(train_batches(train_split, local_batch, order, stats, aug, gen),
                   total=steps_per_epoch, desc=f"{name} {epoch + 1}/{params.epochs}",
                   leave=False, disable=None if rt.main else True, mininterval=1.0)
        for step, (x, y) in enumerate(bar):
            y = y.to(rt.device, non_blocking=True)
            loss, logits = t.step(x, y)
            loss_sum += loss.to(acc_dtype) * len(y)
            correct += (logits.argmax(1) == y).sum()
            seen += len(y)
            if step % 20 == 0 and not bar.disable:
                bar.set_postfix(loss=f"{loss_sum.item() / seen:.4f}")
        bar.close()
        totals = torch.stack([loss_sum, correct.to(acc_dtype),
                              torch.tensor(float(seen), dtype=acc_dtype, device=rt.device)])
        if rt.world > 1:
            dist.all_reduce(totals)
        totals = totals.cpu()  # waits for the epoch's last step, so it is timed
        step_seconds += time.perf_counter() - t0
        train_loss, train_acc = (totals[0] / totals[2]).item(), (totals[1] / totals[2]).item()

        val_loss = val_acc = float("nan")
        if rt.main and len(val_split):
            logits = predict_logits(t.result, val_split, stats, params.eval_batch_size,
                                    rt.device, params.amp)
            val_loss, val_acc = loss_and_accuracy(logits, val_split.labels)
        seconds = time.perf_counter() - t0
        elapsed += seconds
        history.append({"epoch": epoch + 1, "train_loss": train_loss, "train_accuracy": train_acc,
                        "val_loss": val_loss, "val_accuracy": val_acc,
                        "lr": opt.param_groups[0]["lr"], "seconds": seconds})
        if rt.main:
            print(f"{name} epoch {epoch + 1}/{params.epochs}: train loss {train_loss:.4f} "
                  f"acc {train_acc:.4f} | val loss {val_loss:.4f} acc {val_acc:.4f} | "
                  f"{seconds:.1f} s, {seen * rt.world / seconds:.0f} img/s")
            write_curves(curves_path, history)
            save_torch({"fingerprint": fp, "epoch": epoch + 1,
                        "model": _unwrap(model).state_dict(), "optimizer": opt.state_dict(),
                        "scheduler": sched.state_dict(), "scaler": scaler.state_dict(),
                        **({"average": t.average.state_dict()} if t.average is not None else {}),
                        "history": history, "elapsed": elapsed,
                        "step_seconds": step_seconds}, state_path)
        if rt.world > 1:
            dist.barrier()

    meta = {
        "model": name,
        "title": spec(name).title,
        "arch": arch.model_dump(),
        "params": params.model_dump(),
        "trainable_params": n_params,
        "normalize": {"mean": stats.mean, "std": stats.std} if stats else None,
        "train_seconds": round(elapsed, 2),
        # training steps only (no validation): the rate `make bench` measures
        "images_per_second": round(shard * rt.world * params.epochs / max(step_seconds, 1e-9)),
        "epochs": params.epochs,
        "world_size": rt.world,
        "device": str(rt.device),
        "torch": str(torch.__version__),
        "final": history[-1] if history else {},
    }
    if rt.main:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_torch(cpu_state_dict(t.result), out_dir / "model.pt")
        write_json(out_dir / "meta.json", meta)
        write_curves(curves_path, history)
    return meta


def load_checkpoint(model_dir: str | Path, stage: str) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a trained model from ``model_dir`` (weights only: no pickled code runs)."""
    model_dir = Path(model_dir)
    meta_path, weights = model_dir / "meta.json", model_dir / "model.pt"
    if not meta_path.exists() or not weights.exists():
        raise UserError(f"no checkpoint in {model_dir}: run `dvc repro {stage}` first")
    meta = json.loads(meta_path.read_text())
    name = meta["model"]
    model = build_model(name, meta["arch"], where=f"{model_dir}/meta.json arch")
    state = torch.load(weights, weights_only=True, map_location="cpu")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).split("\n")[1].strip() if "\n" in str(exc) else str(exc)
        raise UserError(f"checkpoint {weights} does not fit model '{name}' with its "
                        f"params ({first}); re-run `dvc repro {stage}`") from None
    return model, meta
