"""The training loop: one model, one params section, from scratch or resumed.

Run plainly it is a single process; under ``torchrun`` (which the stage launches
itself when params ask for more than one process) every rank trains on a
disjoint shard of each epoch inside DistributedDataParallel, and only rank 0 writes.
``train()`` reads top to bottom: set up, resume or start, then per epoch train,
validate and save the resume state, and at the end write the results.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from fmnist.batching import epoch_order, train_batches
from fmnist.checkpoint import save_model
from fmnist.common import UserError, first_line
from fmnist.data import Split, Stats, load_split, load_stats
from fmnist.files import OutputSet, atomic_path, check_writable, write_json, write_text
from fmnist.inference import loss_and_accuracy, predict_logits
from fmnist.models import count_parameters, spec
from fmnist.params import TrainParams
from fmnist.resume import Progress, fingerprint, load_state, progress_of, save_state
from fmnist.runtime import Runtime, autocast, environment, resolve_amp
from fmnist.seeds import derive_seed

CURVE_FIELDS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr")


@dataclass(frozen=True)
class RunPaths:
    """Where a training run reads and writes: given on the command line in dvc.yaml."""

    prepared: Path            # the prepared data (input)
    out_dir: Path             # model.pt + meta.json (the stage's cached output)
    curves: Path              # per-epoch curves (plot data, cached by DVC)
    state: Path               # resume state file (per machine, never shared)
    timings: Path | None = None  # wall times and the environment (a git-tracked metric)
    live: Path | None = None  # DVCLive's folder: the latest epoch's metrics, during a run


class NonFiniteLoss(UserError):
    pass


# ---------------------------------------------------------------- the optimization step


def make_optimizer(model: nn.Module, p: TrainParams,
                   device: torch.device) -> torch.optim.Optimizer:
    # Fused kernels update all parameters in one pass: on the CPU they take the AdamW
    # step of the 22M-parameter AlexNet from about a quarter of the step time to a few
    # per cent. Same update rule, same results run to run.
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


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


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

    def state_dict(self) -> dict[str, Any]:
        return {"model": _unwrap(self.model).state_dict(), "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict(), "scaler": self.scaler.state_dict(),
                **({"average": self.average.state_dict()} if self.average is not None else {})}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _unwrap(self.model).load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if self.average is not None:
            self.average.load_state_dict(state["average"])


def make_trainer(name: str, params: TrainParams, device: torch.device,
                 total_steps: int) -> Trainer:
    torch.manual_seed(params.seed)
    model = spec(name).build(params.arch).to(device, memory_format=torch.channels_last)
    opt = make_optimizer(model, params, device)
    return Trainer(model, opt, make_scheduler(opt, params, total_steps),
                   torch.amp.GradScaler(device.type, enabled=params.amp == "fp16"),
                   nn.CrossEntropyLoss(label_smoothing=params.label_smoothing),
                   device, params.amp, make_average(model, params.ema))


# ---------------------------------------------------------------- steps of a run


@dataclass(frozen=True)
class TrainingData:
    train: Split
    val: Split
    stats: Stats | None
    shard: int           # training images per rank and epoch
    local_batch: int     # batch per rank

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.shard / self.local_batch)


def load_data(prepared: Path, params: TrainParams, rt: Runtime) -> TrainingData:
    train_split, val_split = load_split(prepared, "train"), load_split(prepared, "val")
    if rt.device.type == "cuda":
        # 47 MB of uint8 images: on the GPU, each step's batch is gathered and augmented
        # there, where copying and augmenting it on the host cost a third of the rate.
        train_split = train_split.to(rt.device)
    stats = load_stats(prepared) if params.normalize else None
    return TrainingData(train_split, val_split, stats, len(train_split) // rt.world,
                params.batch_size // rt.world)


def resume_or_start(name: str, params: TrainParams, data: TrainingData, paths: RunPaths,
                    rt: Runtime, resume: bool) -> tuple[Trainer, Progress, dict[str, str]]:
    """A fresh trainer, loaded from the saved state where one fits."""
    total = params.epochs * data.steps_per_epoch
    fp = fingerprint(name, params, paths.prepared)
    trainer = make_trainer(name, params, rt.device, total)
    state = load_state(paths.state, fp, name, rt, resume)
    if state is None:
        return trainer, Progress(), fp
    try:
        progress = progress_of(state)
        steps_done = state["scheduler"]["last_epoch"]
        if not 0 < progress.epoch < params.epochs + 1 \
                or steps_done != progress.epoch * data.steps_per_epoch:
            raise ValueError("its epoch and its scheduler disagree")
        if progress.epoch == params.epochs:
            # A finished run (killed before its outputs were swapped in, or a state
            # kept from elsewhere): `dvc repro -f` means train, so train from scratch
            if rt.main:
                print(f"{name}: the saved state in {paths.state} is of a finished run; "
                      "training from scratch")
            return make_trainer(name, params, rt.device, total), Progress(), fp
        trainer.load_state_dict(state)
    except (RuntimeError, KeyError, ValueError, TypeError) as exc:
        # The fingerprint matched but the content does not fit: start over all the same.
        if rt.main:
            print(f"warning: {name}: saved state in {paths.state} does not fit "
                  f"({first_line(exc, 80)}); "
                  "training from scratch")
        return make_trainer(name, params, rt.device, total), Progress(), fp
    if rt.main:
        print(f"{name}: resuming after epoch {progress.epoch} of {params.epochs}")
    return trainer, progress, fp


def _stop_if_not_finite(value: float, name: str, epoch: int, step: int,
                        p: TrainParams) -> None:
    if not math.isfinite(value):
        raise NonFiniteLoss(
            f"{name}: the training loss became {value} in epoch {epoch + 1}, by step "
            f"{step + 1}; stopped, nothing written. Most likely too high a learning "
            f"rate (lr {p.lr:g}, optimizer {p.optimizer}, weight_decay {p.weight_decay:g}, "
            f"amp {p.amp}): lower lr in params.yaml's train_{name}")


def run_epoch(name: str, trainer: Trainer, data: TrainingData, params: TrainParams, rt: Runtime,
              epoch: int) -> tuple[float, float, int]:
    """One epoch of training steps on this rank's shard; the (all-reduced) mean loss,
    accuracy and the number of images seen."""
    # Every random draw of an epoch comes from (seed, epoch, rank): resume needs no RNG
    # state, and a resumed run repeats exactly what the uninterrupted one did.
    torch.manual_seed(derive_seed(params.seed, "torch", epoch, rt.rank))
    gen = torch.Generator().manual_seed(derive_seed(params.seed, "augment", epoch, rt.rank))
    order = epoch_order(len(data.train), params.seed, epoch, rt.rank, rt.world)[:data.shard]
    trainer.model.train()
    device = rt.device
    acc_dtype = torch.float32 if device.type == "mps" else torch.float64  # MPS has no f64
    # The running sums stay on the device: reading them back every step would make the
    # host wait for each GPU step before it can prepare the next batch. On the CPU the
    # loss is known at once, so a non-finite one stops the run at the step it appears.
    check_each_step = device.type == "cpu" and not rt.distributed
    loss_sum = torch.zeros((), dtype=acc_dtype, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen, step = 0, 0
    bar = tqdm(train_batches(data.train, data.local_batch, order, data.stats, params.augment,
                             gen),
               total=data.steps_per_epoch, desc=f"{name} {epoch + 1}/{params.epochs}",
               leave=False, disable=None if rt.main else True, mininterval=1.0)
    for step, (x, y) in enumerate(bar):
        y = y.to(device, non_blocking=True)
        loss, logits = trainer.step(x, y)
        if check_each_step:
            _stop_if_not_finite(loss.item(), name, epoch, step, params)
        loss_sum += loss.to(acc_dtype) * len(y)
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
        if step % 20 == 0 and not bar.disable:
            bar.set_postfix(loss=f"{loss_sum.item() / seen:.4f}")
    bar.close()
    totals = torch.stack([loss_sum, correct.to(acc_dtype),
                          torch.tensor(float(seen), dtype=acc_dtype, device=device)])
    if rt.distributed:
        dist.all_reduce(totals)
    totals = totals.cpu()  # waits for the epoch's last step, so it is timed
    train_loss = (totals[0] / totals[2]).item()
    _stop_if_not_finite(train_loss, name, epoch, step, params)
    return train_loss, (totals[1] / totals[2]).item(), int(totals[2].item())


def validate_epoch(trainer: Trainer, data: TrainingData, params: TrainParams,
                   rt: Runtime) -> dict[str, float]:
    """The validation split's loss and accuracy, on rank 0; nothing where there is no
    validation split (the final refit), so nothing about it is printed or logged."""
    if not rt.main or not len(data.val):
        return {}
    logits = predict_logits(trainer.result, data.val, data.stats, params.eval_batch_size,
                            rt.device, params.amp)
    loss, accuracy = loss_and_accuracy(logits, data.val.labels)
    return {"val_loss": loss, "val_accuracy": accuracy}


def write_curves(path: Path, history: list[dict[str, float]]) -> None:
    """The per-epoch curves, rewritten whole from the run's history (a resumed run's
    too): one row per epoch, the columns that the run has."""
    fields = [k for k in CURVE_FIELDS if history and k in history[0]]
    lines = ["\t".join(fields)]
    for row in history:
        lines.append("\t".join(f"{row[k]:.6g}" if isinstance(row[k], float) else str(row[k])
                               for k in fields))
    write_text(path, "\n".join(lines) + "\n")


def epoch_line(name: str, params: TrainParams, row: dict[str, float], seen: int) -> str:
    val = (f" | val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.4f}"
           if "val_loss" in row else "")
    return (f"{name} epoch {row['epoch']}/{params.epochs}: train loss {row['train_loss']:.4f} "
            f"acc {row['train_accuracy']:.4f}{val} | {row['seconds']:.1f} s, "
            f"{seen / row['seconds']:.0f} img/s")


# DVCLive's name for each curve field
LIVE_NAMES = {"epoch": "epoch", "train_loss": "train/loss", "train_accuracy": "train/accuracy",
              "val_loss": "val/loss", "val_accuracy": "val/accuracy", "lr": "lr"}


def open_live(path: Path | None) -> Any:
    """DVCLive, writing the latest epoch's metrics to ``path``/metrics.json, where
    `dvc exp show`, VS Code's DVC extension and DVC Studio read them while a run goes.
    Never resumed from its own files (``LiveMetrics`` rebuilds them from the run's
    history), so a file left damaged by a kill cannot stop a later run.

    Only that summary: the per-epoch curves have one writer, ``write_curves`` (a resumed
    run rewrites them from its saved history, so they hold exactly one row per epoch).
    DVCLive neither writes a dvc.yaml (the project's declares this file as the training
    stage's metrics) nor saves an experiment of its own (`dvc exp run` makes one), and
    posts to DVC Studio only where the user has configured a token."""
    if path is None:
        return None
    from dvclive import Live
    from scmrepo.exceptions import SCMError

    class QuietLive(Live):
        def _init_dvc(self) -> None:
            # DVCLive 3.49 reads the git HEAD without checking for one: in a repository
            # without commits yet (`git init`, then the first `dvc repro`) it raises.
            # There is no experiment to log to then; the metrics file is written all
            # the same.
            try:
                super()._init_dvc()
            except SCMError:
                self._dvc_file = "dvc.yaml"

    return QuietLive(str(path), resume=False, report=None, dvcyaml=None,
                     save_dvc_exp=False)


class LiveMetrics:
    """DVCLive's file, kept to the stage's all-or-nothing rule as far as a file that is
    read *during* the run can be: rebuilt from the run's history when a run starts or
    resumes (one step per epoch, as the uninterrupted run wrote it), and put back as it
    was when the run fails."""

    def __init__(self, path: Path, history: list[dict[str, float]]):
        self.file = path / "metrics.json"
        self.previous = self.file.read_bytes() if self.file.is_file() else None
        self.live = open_live(path)
        for row in history:
            log_live(self.live, row)

    def log(self, row: dict[str, float]) -> None:
        log_live(self.live, row)

    def end(self) -> None:
        self.live.end()

    def put_back(self) -> None:
        if self.previous is None:
            self.file.unlink(missing_ok=True)
            return
        with atomic_path(self.file) as tmp:
            tmp.write_bytes(self.previous)


def log_live(live: Any, row: dict[str, float]) -> None:
    """One epoch's metrics as DVCLive's step ``epoch - 1`` (the run's state decides the
    epoch, so a resumed run logs each epoch once)."""
    live.step = int(row["epoch"]) - 1
    for key, name in LIVE_NAMES.items():
        if key in row:
            live.log_metric(name, row[key], plot=False)
    live.next_step()  # writes metrics.json and signals VS Code that a step is done


@torch.no_grad()
def final_training_scores(trainer: Trainer, data: TrainingData, params: TrainParams,
                          rt: Runtime) -> dict[str, float]:
    """The write-up's training loss and accuracy: the finished model in eval mode, in
    fp32 and the single view, on the whole training split (no augmentation), measured
    here where the model is in memory so that ``evaluate`` reads the test split only."""
    logits = predict_logits(trainer.result, data.train, data.stats, params.eval_batch_size,
                            rt.device)
    loss, accuracy = loss_and_accuracy(logits, data.train.labels.cpu())
    return {"loss": loss, "accuracy": accuracy}


def model_meta(name: str, params: TrainParams, trainer: Trainer, data: TrainingData, rt: Runtime,
             progress: Progress, train_scores: dict[str, float]) -> dict[str, Any]:
    """meta.json: what rebuilds and describes the model. A pure function of the run's
    inputs: no times, hosts or paths (those go to the timings file)."""
    return {
        "model": name,
        "title": spec(name).title,
        "arch": params.arch.model_dump(),
        "params": params.model_dump(),
        "trainable_params": count_parameters(trainer.result),
        "normalize": ({"mean": data.stats.mean, "std": data.stats.std}
                      if data.stats else None),
        "epochs": params.epochs,
        "device": rt.device.type,
        "world_size": rt.world,
        "numerics": rt.numerics.record(),
        "final": {k: v for k, v in progress.history[-1].items() if k in CURVE_FIELDS}
        if progress.history else {},
        "train_scores": train_scores,
    }


def timings(data: TrainingData, params: TrainParams, rt: Runtime, progress: Progress) -> dict:
    return {
        "precision": params.amp,
        "train_seconds": round(progress.elapsed, 2),
        # training steps only (no validation): the rate `make bench` measures
        "images_per_second": round(data.shard * rt.world * params.epochs
                                   / max(progress.step_seconds, 1e-9)),
        "environment": environment(rt),
    }


# ---------------------------------------------------------------- the run


def train(name: str, params: TrainParams, paths: RunPaths, rt: Runtime,
          resume: bool = True) -> dict[str, Any]:
    """Train model ``name``; write model.pt, meta.json and the curves; return the meta."""
    # From here on params.amp is the precision that runs (meta.json records it)
    params = params.model_copy(update={"amp": resolve_amp(params.amp, rt.device)})
    if rt.main:  # before any work: a path that cannot be written stops the run now
        check_writable([p for p in (paths.out_dir, paths.curves, paths.timings, paths.state,
                                    paths.live) if p is not None], f"training {name}")
    data = load_data(paths.prepared, params, rt)
    trainer, progress, fp = resume_or_start(name, params, data, paths, rt, resume)
    live = LiveMetrics(paths.live, progress.history) if rt.main and paths.live else None
    try:
        return _train(name, params, paths, rt, data, trainer, progress, fp, live)
    except BaseException:
        if live is not None:  # a failed run leaves the previous run's live metrics
            live.put_back()
        raise


def _train(name: str, params: TrainParams, paths: RunPaths, rt: Runtime, data: TrainingData,
           trainer: Trainer, progress: Progress, fp: dict[str, str],
           live: LiveMetrics | None) -> dict[str, Any]:
    if rt.distributed:
        trainer.model = nn.parallel.DistributedDataParallel(
            trainer.model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)

    for epoch in range(progress.epoch, params.epochs):
        t0 = time.perf_counter()
        train_loss, train_acc, seen = run_epoch(name, trainer, data, params, rt, epoch)
        progress.step_seconds += time.perf_counter() - t0
        val = validate_epoch(trainer, data, params, rt)
        seconds = time.perf_counter() - t0
        progress.elapsed += seconds
        progress.epoch = epoch + 1
        row = {"epoch": epoch + 1, "train_loss": train_loss, "train_accuracy": train_acc,
               **val, "lr": trainer.opt.param_groups[0]["lr"], "seconds": seconds}
        progress.history.append(row)
        if rt.main:
            print(epoch_line(name, params, row, seen))
            save_state(paths.state, fp, trainer.state_dict(), progress)
            if live is not None:
                live.log(row)
        if rt.distributed:
            dist.barrier()

    scores = final_training_scores(trainer, data, params, rt) if rt.main else {}
    meta = model_meta(name, params, trainer, data, rt, progress, scores)
    if rt.main:
        # the model, its curves and timings appear together, or not at all
        targets = [p for p in (paths.out_dir, paths.curves, paths.timings) if p is not None]
        with OutputSet.beside(targets) as out:
            save_model(trainer.result, meta, out.dir(paths.out_dir))
            write_curves(out.file(paths.curves), progress.history)
            if paths.timings is not None:
                write_json(out.file(paths.timings), timings(data, params, rt, progress))
        if live is not None:
            live.end()
    return meta
