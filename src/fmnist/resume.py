"""Resuming an interrupted training run: the saved state and what it must match.

After every epoch rank 0 saves the resume state (the stage's ``--state`` file): weights,
optimizer, scheduler, the curves so far. A later run resumes from it only when its
fingerprint (the params that change results, the training code, the prepared data)
matches; a state that does not match, or that cannot be read at all, is ignored with a
one-line warning and is overwritten after the next epoch. Only rank 0 reads the file:
its decision, and the state itself, reach the other ranks through the process group, so
a node that does not have the file resumes in step with the one that does.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch.distributed as dist

from fmnist import closure
from fmnist.data import TRAINING_FILES
from fmnist.files import Unreadable, load_torch, save_torch
from fmnist.params import TrainParams
from fmnist.runtime import Runtime

# The module whose import closure is the code that decides a training run's numbers
TRAINING_CODE = "fmnist.train"
STATE_KEYS = ("fingerprint", "epoch", "model", "optimizer", "scheduler", "scaler",
              "history", "elapsed", "step_seconds")


@dataclass
class Progress:
    """Where a run stands: epochs done, the curves so far, the time spent."""

    epoch: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    elapsed: float = 0.0       # seconds, validation included
    step_seconds: float = 0.0  # seconds in training steps only


def fingerprint(name: str, params: TrainParams, prepared: Path) -> dict[str, str]:
    """What a saved state must match to be resumed: params, code and data. Where the
    processes meet (address, port, node rank) is not in it: it changes no result."""
    src = closure.SRC
    return {
        "params": hashlib.sha256(json.dumps({"model": name, **params.model_dump()},
                                            sort_keys=True).encode()).hexdigest(),
        "code": closure.files_digest(closure.module_closure(TRAINING_CODE, src), src),
        "data": closure.files_digest([prepared / f for f in TRAINING_FILES], prepared),
    }


def _read(path: Path, fp: dict[str, str], name: str) -> tuple[dict | None, str | None]:
    """The saved state if it can be resumed, else None and the reason (one line)."""
    try:
        state = load_torch(path)
    except Unreadable as exc:
        return None, f"{name}: saved state {path} is unreadable ({exc}); training from scratch"
    if not isinstance(state, dict) or any(k not in state for k in STATE_KEYS) \
            or not isinstance(state["fingerprint"], dict):
        return None, f"{name}: {path} is not a resume state; training from scratch"
    stale = [k for k in fp if state["fingerprint"].get(k) != fp[k]]
    if stale:
        return None, (f"{name}: saved state in {path} was made from other "
                      f"{', '.join(stale)}; training from scratch")
    return state, None


def load_state(path: Path, fp: dict[str, str], name: str, rt: Runtime,
               resume: bool) -> dict[str, Any] | None:
    """The state to resume from, the same on every rank (None: start from scratch)."""
    state, note = None, None
    if resume and rt.main and path.exists():
        state, note = _read(path, fp, name)
    if rt.distributed:
        box = [state, note]
        dist.broadcast_object_list(box, src=0)
        state, note = box
    if note and rt.main:
        print(f"warning: {note}")
    return state


def save_state(path: Path, fp: dict[str, str], trainer_state: dict[str, Any],
               progress: Progress) -> None:
    save_torch({"fingerprint": fp, "epoch": progress.epoch, **trainer_state,
                "history": progress.history, "elapsed": progress.elapsed,
                "step_seconds": progress.step_seconds}, path)


def progress_of(state: dict[str, Any]) -> Progress:
    return Progress(int(state["epoch"]), list(state["history"]), float(state["elapsed"]),
                    float(state["step_seconds"]))
