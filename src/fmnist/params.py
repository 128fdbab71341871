"""Typed, validated views of ``params.yaml``: one model per stage section.

Each stage reads only its own section and validates it before writing anything, so a
bad value ends in one line that names the file and the key, e.g.
``params.yaml: train_lenet.lr: Input should be greater than 0 (got -0.1)``.

Two kinds of keys: those that can change a stage's outputs (``dvc.yaml`` lists them as
params deps, so editing one re-runs the stage), and run-time settings that only say
*how* a run is executed (the ``runtime`` section, and the download's timeout, retries
and backoff): no stage lists those, so editing them re-runs nothing.

One rule for defaults: there are none. Every key of every section is required, so
``params.yaml`` is the one place a value is stated, and deleting a key is an error that
names it rather than a silent fallback. Model architectures (``arch``) are typed beside
their models in ``fmnist.models``, which also holds the model registry.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar
from urllib.parse import urlparse

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from fmnist import NUM_CLASSES
from fmnist.common import ParamsError, UserError
from fmnist.views import VIEWS

PARAMS_FILE = "params.yaml"
M = TypeVar("M", bound=BaseModel)

# Seeds reach torch (< 2**64), NumPy and scikit-learn (both < 2**32): the common range.
SEED_MAX = 2**32 - 1
TRAIN_IMAGES = 60_000


class Strict(BaseModel):
    """Unknown keys are errors, and so are inf/nan: a typo must not be silently ignored.
    Types are strict: no bool or string becomes a number, no number a bool (``epochs:
    true`` or ``lr: "0.01"`` are errors, not 1 and 0.01); an int is a float."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, strict=True)


RAW_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


class DownloadParams(Strict):
    sources: list[str] = Field(min_length=1)
    timeout: float = Field(gt=0, le=3600, description="connect and read timeout, seconds")
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
    val_size: int = Field(ge=0, lt=TRAIN_IMAGES,
                          description="images held out of the training split")
    seed: int = Field(ge=0, le=SEED_MAX)

    @field_validator("val_size")
    @classmethod
    def _every_class_on_both_sides(cls, v: int) -> int:
        # A stratified split needs at least one image per class on each side.
        if 0 < v < NUM_CLASSES:
            raise ValueError(f"must be 0 or at least {NUM_CLASSES} (one image per class)")
        return v


class Augment(Strict):
    crop_padding: int = Field(ge=0, le=8)
    hflip: bool
    erase: float = Field(ge=0, le=1, description="random erasing probability; 0 = off")
    erase_area: list[float] = Field(min_length=2, max_length=2,
                                    description="erased fraction of the image: low, high")
    erase_ratio: list[float] = Field(min_length=2, max_length=2,
                                     description="aspect ratio h/w: low, high")

    @field_validator("erase_area", "erase_ratio")
    @classmethod
    def _ordered_range(cls, v: list[float], info: ValidationInfo) -> list[float]:
        top = 1 if info.field_name == "erase_area" else 1000  # an area is a fraction
        lo, hi = v
        if not 0 < lo <= hi <= top:
            raise ValueError(f"needs 0 < low <= high <= {top}")
        return v


class Distributed(Strict):
    """The shape of a distributed run (it changes the results). Where its processes
    meet (address, port, node rank) is run-time only: see ``RuntimeParams``."""

    nproc: int = Field(ge=1, le=1024, description="processes per node; 1 = no torchrun")
    nnodes: int = Field(ge=1, le=4096)
    backend: Literal["auto", "gloo", "nccl"]

    @property
    def world(self) -> int:
        return self.nproc * self.nnodes


# ---------------------------------------------------------------- training


A = TypeVar("A", bound=Strict)


class TrainParams(Strict, Generic[A]):
    """One model's training section, ``train_NAME``; ``TrainParams[Arch]`` types its
    ``arch`` (each model's ``Spec`` in ``fmnist.models`` does that)."""

    arch: A
    epochs: int = Field(ge=1, le=10_000)
    batch_size: int = Field(ge=1, le=TRAIN_IMAGES)
    optimizer: Literal["adam", "adamw", "sgd"]
    lr: float = Field(gt=0, le=10)
    weight_decay: float = Field(ge=0, le=10)
    momentum: float = Field(ge=0, lt=1)
    schedule: Literal["onecycle", "cosine", "constant"]
    warmup: float = Field(ge=0, lt=1, description="fraction of steps spent warming up")
    label_smoothing: float = Field(ge=0, lt=1)
    ema: float = Field(ge=0, lt=1, description="decay of the weights' moving average; 0 = off")
    normalize: bool
    augment: Augment
    seed: int = Field(ge=0, le=SEED_MAX)
    device: Literal["auto", "cpu", "cuda", "mps"]
    # mixed precision; auto: bf16 on a CPU with native bf16, else none. Not "off": YAML
    # 1.1 reads that as false.
    amp: Literal["none", "bf16", "fp16", "auto"]
    threads: int = Field(ge=0, le=1024, description="CPU threads; 0 = torch's default")
    # portable: the same bits on every CPU of a tier (fmnist.numerics); native: the
    # libraries' own choice of kernels, the same bits on the same kind of CPU only
    numerics: Literal["portable", "native"]
    eval_batch_size: int = Field(ge=1, le=100_000)
    distributed: Distributed

    @model_validator(mode="after")
    def _consistent(self) -> TrainParams:
        d = self.distributed
        if self.numerics == "portable" and not self.threads:
            raise ValueError("threads: portable numerics need a fixed thread count "
                             "(threads >= 1; it is part of the recipe)")
        # What needs CUDA (nccl, fp16) is checked once the device is known, for
        # device: auto too: fmnist.runtime.check_device.
        if self.batch_size % d.world:
            raise ValueError(f"batch_size: {self.batch_size} does not divide among "
                             f"{d.world} processes (distributed.nproc x nnodes)")
        return self


class RuntimeParams(Strict):
    """How a run is executed, never what it computes: no stage lists this section."""

    resume: bool
    master_addr: str
    master_port: int = Field(ge=1, le=65535)
    node_rank: int = Field(ge=0)
    rendezvous_timeout: int = Field(ge=1, le=86_400, description="seconds a node waits "
                                    "for the others")


class EvaluateParams(Strict):
    batch_size: int = Field(ge=1, le=100_000)
    misclassified: int = Field(ge=0, le=100, description="images in the error grid")
    device: Literal["auto", "cpu", "cuda", "mps"]
    # test-time augmentation: average the logits of each image and its mirror image
    tta: Literal[VIEWS]  # type: ignore[valid-type]  # fmnist.views: one name each
    threads: int = Field(ge=1, le=1024, description="CPU threads, pinned as in training")
    numerics: Literal["portable", "native"]  # as in training: fmnist.numerics


class PackageParams(Strict):
    opset: int = Field(ge=17, le=23, description="the ONNX opset of the export")
    # ONNX Runtime against PyTorch, fp32, on the whole test split: the export fails above
    max_logit_diff: float = Field(gt=0, le=1)


# The sections of the stages that train no model (each model's: fmnist.models.MODELS);
# `runtime` is the one other section
STAGE_SECTIONS: dict[str, type[Strict]] = {
    "download": DownloadParams, "preprocess": PreprocessParams,
    "evaluate": EvaluateParams, "package": PackageParams}
RUNTIME_SECTION = "runtime"


# ---------------------------------------------------------------- loading


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def format_error(where: str, err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in (where, *e["loc"]) if p != "")
        msg = e["msg"].removeprefix("Value error, ")
        if not e["loc"] and e["type"] == "value_error":
            parts.append(f"{where}.{msg}")  # a cross-field check: the message names its key
        elif e["type"] in ("missing", "extra_forbidden"):
            parts.append(f"{loc}: {msg}")
        else:
            parts.append(f"{loc}: {msg} (got {_short(e['input'])})")
    return "; ".join(parts)


def validate(model: type[M], data: Any, where: str, source: str | Path = PARAMS_FILE) -> M:
    """Validate ``data`` against ``model``; raise a one-line UserError naming the file
    (``source``) and the key (``where``)."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ParamsError(f"{source}: {format_error(where, err)}") from None


# YAML aliases a params file may hold: each can repeat a whole subtree, so a few nested
# ones expand to gigabytes (a "billion laughs"); params.yaml needs none. And how deep
# mappings and lists may nest: params.yaml needs 4 levels, a parser recursing 2,000
# deep runs out of stack
MAX_ALIASES = 16
MAX_DEPTH = 32


def load_yaml(text: str) -> Any:
    """YAML 1.2, as DVC reads params (ruamel.yaml, its own parser): ``0042`` is 42,
    ``1:00`` and ``no`` are strings. A duplicate key is an error (PyYAML would keep the
    last value silently); aliases and depth are bounded, checked on the event stream
    before anything is built. Raises ValueError with a one-line message."""
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError as RuamelError
    from ruamel.yaml.events import (
        AliasEvent,
        CollectionEndEvent,
        CollectionStartEvent,
        MappingStartEvent,
        ScalarEvent,
    )

    yaml12 = YAML(typ="safe", pure=True)
    try:
        aliases = 0
        # per open collection: a mapping's keys so far (line of each) and whether the
        # next node is a key; None for a sequence
        stack: list[list[Any]] = []
        for event in yaml12.parse(text):
            line = event.start_mark.line + 1
            if isinstance(event, AliasEvent):
                aliases += 1
                if aliases > MAX_ALIASES:
                    raise ValueError(f"line {line}: more than {MAX_ALIASES} aliases (*name)")
            if isinstance(event, ScalarEvent | AliasEvent | CollectionStartEvent) \
                    and stack and stack[-1][0] is not None:
                seen, is_key = stack[-1]
                if is_key and isinstance(event, ScalarEvent) and event.value != "<<":
                    if event.value in seen:  # `<<: *name` may be overridden, by design
                        raise ValueError(f"line {line}: duplicate key {_short(event.value)} "
                                         f"(first at line {seen[event.value]}); one of "
                                         "them must go")
                    seen[event.value] = line
                stack[-1][1] = not is_key
            if isinstance(event, CollectionStartEvent):
                stack.append([{}, True] if isinstance(event, MappingStartEvent)
                             else [None, False])
                if len(stack) > MAX_DEPTH:
                    raise ValueError(f"line {line}: nested more than {MAX_DEPTH} levels deep")
            elif isinstance(event, CollectionEndEvent):
                stack.pop()
        return yaml12.load(text)
    except RuamelError as exc:
        raise ValueError(_excerpt(str(exc))) from None


def _excerpt(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def read_params(path: str | Path = PARAMS_FILE) -> dict[str, Any]:
    """A params file, read as DVC reads it (``load_yaml``)."""
    path = Path(path)
    if path.exists() and not path.is_file():
        raise UserError(f"cannot read {path}: not a regular file (a FIFO or a folder?)")
    try:
        data = load_yaml(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path} not found: run from the project root") from None
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ParamsError(f"{path} is not valid YAML: {_excerpt(str(exc))}") from None
    if not isinstance(data, dict):
        raise ParamsError(f"{path} must hold a mapping of stage sections")
    return data


def load_section(section: str, model: type[M], path: str | Path = PARAMS_FILE) -> M:
    """Read one section of ``path`` and validate it."""
    data = read_params(path)
    if section not in data:
        raise ParamsError(f"{path}: section '{section}' is missing")
    return validate(model, data[section], section, path)


def load_runtime(path: str | Path = PARAMS_FILE) -> RuntimeParams:
    return load_section(RUNTIME_SECTION, RuntimeParams, path)
