"""A trained model on disk: ``model.pt`` + ``meta.json``, saved and loaded.

``model.pt`` is a plain state dict with every tensor on the CPU, loaded with
``weights_only=True`` (no pickled code runs); ``meta.json`` holds what rebuilds the
model (name, arch) and how inputs were normalized. Both are pure functions of the
training stage's deps and params: no times, hosts or paths.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fmnist.common import UserError
from fmnist.files import Unreadable, load_torch, save_torch, write_json
from fmnist.models import build_model


def cpu_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict with every tensor on the CPU, so that a plain
    ``torch.load`` of a GPU-trained model works on a machine without one."""
    state = model.state_dict()
    for k, v in state.items():  # in place: the dict keeps its type and _metadata
        state[k] = v.cpu()
    return state


def save_model(model: nn.Module, meta: dict[str, Any], out_dir: Path) -> None:
    """Write model.pt and meta.json into ``out_dir``: a folder built aside (an
    ``OutputSet``'s), swapped in whole by the caller."""
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
        state = load_torch(path)
    except Unreadable as exc:
        raise UserError(f"{path} is unreadable or not plain weights ({exc}); {fix}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor)
                                              for v in state.values()):
        raise UserError(f"{path} holds a {type(state).__name__}, not a state dict; {fix}")
    return state


def _check_normalize(meta: dict[str, Any], path: Path, fix: str) -> None:
    norm = meta.get("normalize")
    if norm is None:
        return
    try:
        mean, std = float(norm["mean"]), float(norm["std"])
    except (TypeError, KeyError, ValueError):
        raise UserError(f"{path}: normalize must hold a mean and a std; {fix}") from None
    if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
        raise UserError(f"{path}: normalize needs a finite mean and a finite std > 0 "
                        f"(got mean {mean}, std {std}); {fix}")


def load_checkpoint(model_dir: str | Path,
                    name: str | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a trained model from ``model_dir``, which must hold model ``name`` where
    one is given; every failure is one line naming the file and the fix (re-running or
    pulling the model's training stage)."""
    from fmnist.models import spec

    model_dir = Path(model_dir)
    meta_path, weights = model_dir / "meta.json", model_dir / "model.pt"
    stage = spec(name).stage if name else "train-NAME"
    fix = f"re-run `dvc repro {stage}` (or `dvc pull {stage}`)"
    if not meta_path.exists() or not weights.exists():
        raise UserError(f"no checkpoint in {model_dir}: run `dvc repro {stage}` first "
                        f"(or `dvc pull {stage}`)")
    meta = _read_meta(meta_path, fix)
    if name is not None and meta["model"] != name:
        raise UserError(f"{meta_path} describes a '{meta['model']}', not the '{name}' this "
                        f"folder must hold; {fix}")
    if name is None:
        stage = spec(meta["model"]).stage
        fix = f"re-run `dvc repro {stage}` (or `dvc pull {stage}`)"
    _check_normalize(meta, meta_path, fix)
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
