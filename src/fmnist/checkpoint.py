"""A trained model on disk (``model.pt`` + ``meta.json``), and inference with it.

``model.pt`` is a plain state dict with every tensor on the CPU, loaded with
``weights_only=True`` (no pickled code runs); ``meta.json`` holds what rebuilds the
model (name, arch) and how inputs were normalized. Both are pure functions of the
training stage's deps and params: no times, hosts or paths.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fmnist.common import UserError, first_line, write_json
from fmnist.data import Split, Stats, eval_batches, save_torch
from fmnist.models import build_model
from fmnist.runtime import autocast

UNREADABLE = (OSError, RuntimeError, EOFError, ValueError, KeyError, TypeError,
              zipfile.BadZipFile, pickle.UnpicklingError)


def cpu_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict with every tensor on the CPU, so that a plain
    ``torch.load`` of a GPU-trained model works on a machine without one."""
    state = model.state_dict()
    for k, v in state.items():  # in place: the dict keeps its type and _metadata
        state[k] = v.cpu()
    return state


def save_model(model: nn.Module, meta: dict[str, Any], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    save_torch(cpu_state_dict(model), out_dir / "model.pt")
    write_json(out_dir / "meta.json", meta)


def _read_meta(path: Path, fix: str) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path} is unreadable ({type(exc).__name__}); {fix}") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("model"), str) \
            or not isinstance(meta.get("arch", {}), dict):
        raise UserError(f"{path} is not a model's meta.json; {fix}")
    return meta


def _read_weights(path: Path, fix: str) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except UNREADABLE as exc:
        raise UserError(f"{path} is unreadable or not plain weights "
                        f"({first_line(exc, 120)}); {fix}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor)
                                              for v in state.values()):
        raise UserError(f"{path} holds a {type(state).__name__}, not a state dict; {fix}")
    return state


def load_checkpoint(model_dir: str | Path, stage: str) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a trained model from ``model_dir``; every failure is one line naming the
    file and the fix."""
    model_dir = Path(model_dir)
    meta_path, weights = model_dir / "meta.json", model_dir / "model.pt"
    fix = f"re-run `dvc repro {stage}` (or `dvc pull {stage}`)"
    if not meta_path.exists() or not weights.exists():
        raise UserError(f"no checkpoint in {model_dir}: run `dvc repro {stage}` first "
                        f"(or `dvc pull {stage}`)")
    meta = _read_meta(meta_path, fix)
    model = build_model(meta["model"], meta.get("arch"), where="arch", source=meta_path)
    state = _read_weights(weights, fix)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        lines = str(exc).split("\n")
        first = lines[1].strip() if len(lines) > 1 else lines[0]
        raise UserError(f"checkpoint {weights} does not fit model '{meta['model']}' with "
                        f"its params ({first}); {fix}") from None
    return model, meta


@torch.no_grad()
def predict_logits(model: nn.Module, split: Split, stats: Stats | None, batch_size: int,
                   device: torch.device, amp: str = "none",
                   hflip: bool = False) -> torch.Tensor:
    """Logits (float32, on the CPU) for every image of ``split``, in order. With
    ``hflip``, the mean of the logits of each image and of its mirror image (the models
    train with horizontal flips, so both are images they know)."""
    model.eval()
    out = []
    for x, _ in eval_batches(split, batch_size, stats):
        x = x.to(device, non_blocking=True)
        with autocast(device, amp):
            logits = model(x).float()
            if hflip:
                logits = (logits + model(x.flip(-1)).float()) / 2
        out.append(logits.cpu())
    return torch.cat(out) if out else torch.empty(0, 10)


def loss_and_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    if len(labels) == 0:
        return float("nan"), float("nan")
    loss = nn.functional.cross_entropy(logits, labels).item()
    return loss, (logits.argmax(1) == labels).float().mean().item()
