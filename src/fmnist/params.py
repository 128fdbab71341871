"""Typed, validated views of ``params.yaml``: one model per stage section.

Each stage reads only its own section and validates it before writing anything, so a
bad value ends in one line that names the key, e.g.
``params.yaml: train_lenet.lr: Input should be greater than 0 (got -0.1)``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlparse

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fmnist.common import UserError

PARAMS_FILE = "params.yaml"
M = TypeVar("M", bound=BaseModel)


class Strict(BaseModel):
    """Unknown keys are errors: a typo in params.yaml must not be silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


RAW_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


class DownloadParams(Strict):
    sources: list[str] = Field(min_length=1)
    timeout: float = Field(gt=0, description="connect and read timeout, seconds")
    retries: int = Field(ge=0, le=10)
    backoff: float = Field(ge=0, le=60)
    sha256: dict[str, str]

    @field_validator("sources")
    @classmethod
    def _known_schemes(cls, sources: list[str]) -> list[str]:
        for src in sources:
            scheme = urlparse(src).scheme
            if scheme not in ("", "file", "http", "https"):
                raise ValueError(
                    f"unknown source scheme {scheme!r} in {src!r} "
                    "(use a directory, file://, http:// or https://)"
                )
        return sources

    @field_validator("sha256")
    @classmethod
    def _four_hashes(cls, hashes: dict[str, str]) -> dict[str, str]:
        if set(hashes) != set(RAW_FILES):
            raise ValueError(f"needs exactly the keys {', '.join(RAW_FILES)}")
        for name, digest in hashes.items():
            if not re.fullmatch(r"[0-9a-f]{64}", digest):
                raise ValueError(f"{name}: not a SHA-256 hex digest")
        return hashes


class PreprocessParams(Strict):
    val_size: int = Field(ge=0, description="images held out of the training split")
    seed: int


class Augment(Strict):
    crop_padding: int = Field(ge=0, le=8)
    hflip: bool
    erase: float = Field(0.0, ge=0, le=1, description="random erasing probability; 0 = off")
    erase_area: tuple[float, float] = Field((0.02, 0.4),
                                            description="erased fraction of the image")
    erase_ratio: tuple[float, float] = Field((0.3, 3.3), description="aspect ratio h/w")

    @field_validator("erase_area")
    @classmethod
    def _area(cls, v: tuple[float, float]) -> tuple[float, float]:
        lo, hi = v
        if not 0 < lo <= hi <= 1:
            raise ValueError("needs 0 < low <= high <= 1")
        return v

    @field_validator("erase_ratio")
    @classmethod
    def _ratio(cls, v: tuple[float, float]) -> tuple[float, float]:
        lo, hi = v
        if not 0 < lo <= hi:
            raise ValueError("needs 0 < low <= high")
        return v


class Distributed(Strict):
    nproc: int = Field(ge=1, le=1024, description="processes per node; 1 = no torchrun")
    nnodes: int = Field(ge=1)
    node_rank: int = Field(ge=0)
    master_addr: str
    master_port: int = Field(ge=1, le=65535)
    backend: Literal["auto", "gloo", "nccl"]


class TrainParams(Strict):
    arch: dict[str, Any] = Field(default_factory=dict)
    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    optimizer: Literal["adam", "adamw", "sgd"]
    lr: float = Field(gt=0)
    weight_decay: float = Field(ge=0)
    momentum: float = Field(ge=0, lt=1)
    schedule: Literal["onecycle", "cosine", "constant"]
    warmup: float = Field(ge=0, lt=1, description="fraction of steps spent warming up")
    label_smoothing: float = Field(ge=0, lt=1)
    ema: float = Field(ge=0, lt=1, description="decay of the weights' moving average; 0 = off")
    normalize: bool
    augment: Augment
    seed: int
    device: Literal["auto", "cpu", "cuda", "mps"]
    amp: Literal["none", "bf16", "fp16"]  # not "off": YAML 1.1 reads that as false
    threads: int = Field(ge=0, description="CPU threads; 0 = torch's default")
    resume: bool
    eval_batch_size: int = Field(ge=1)
    distributed: Distributed


class EvaluateParams(Strict):
    batch_size: int = Field(ge=1)
    misclassified: int = Field(ge=0, le=100, description="images in the error grid")
    device: Literal["auto", "cpu", "cuda", "mps"]


def format_error(where: str, err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in (where, *e["loc"]) if p != "")
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] in ("missing", "extra_forbidden"):
            parts.append(f"{loc}: {msg}")
        else:
            parts.append(f"{loc}: {msg} (got {e['input']!r})")
    return "; ".join(parts)


def validate(model: type[M], data: Any, where: str) -> M:
    """Validate ``data`` against ``model``; raise a one-line UserError naming the key."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise UserError(f"{PARAMS_FILE}: {format_error(where, err)}") from None


def read_params(path: str | Path = PARAMS_FILE) -> dict[str, Any]:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path} not found: run from the project root") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{path} is not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a mapping of stage sections")
    return data


def load_section(section: str, model: type[M], path: str | Path = PARAMS_FILE) -> M:
    """Read one stage's section of ``params.yaml`` and validate it."""
    data = read_params(path)
    if section not in data:
        raise UserError(f"{path}: section '{section}' is missing")
    return validate(model, data[section], section)
