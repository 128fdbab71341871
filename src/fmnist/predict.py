"""``fmnist predict``: classify image files with a trained model folder or its ONNX export.

The same answer as ``evaluate``: a model folder runs through ``fmnist.inference`` with
the normalization of its ``meta.json``; the test-time view is ``--tta``, else the one
recorded with the model (a release folder's ``meta.json``, an ONNX file's metadata),
else ``params.yaml``'s ``evaluate.tta``. An ONNX file runs on ONNX Runtime alone: this
module imports torch only for a model folder.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from fmnist import CLASSES
from fmnist.common import UserError, first_line
from fmnist.images import Item, read_inputs
from fmnist.views import MIRROR, SINGLE, VIEWS

ONNX_META_KEY = "fmnist"   # the ONNX file's metadata entry: a JSON object
MODEL_FILES = ("model.pt", "meta.json")


class Model(Protocol):
    name: str
    meta: dict[str, Any]

    def logits(self, images: np.ndarray, view: str) -> np.ndarray:
        """uint8 (N, 28, 28) -> float32 (N, 10)"""


class TorchModel:
    """A model folder: ``model.pt`` and ``meta.json``."""

    def __init__(self, folder: Path, batch_size: int):
        try:
            import torch
        except ImportError as exc:
            raise UserError(f"a model folder needs PyTorch, which does not import here "
                            f"({first_line(exc, 60)}); the release folder's model.onnx "
                            "runs without it") from None

        from fmnist.checkpoint import load_checkpoint
        from fmnist.inference import input_stats

        for name in MODEL_FILES:
            if not (folder / name).is_file():
                raise UserError(f"{folder}: no {name}; a model folder holds "
                                f"{' and '.join(MODEL_FILES)} (`dvc pull`, or "
                                "`dvc artifacts get`)")
        self.model, self.meta = load_checkpoint(folder)
        self.name = self.meta["model"]
        self.stats = input_stats(self.meta)
        self.batch_size = batch_size
        self.device = torch.device("cpu")

    def logits(self, images: np.ndarray, view: str) -> np.ndarray:
        import torch

        from fmnist.data import Split
        from fmnist.inference import predict_logits

        split = Split(torch.from_numpy(images), torch.zeros(len(images), dtype=torch.int64))
        return predict_logits(self.model, split, self.stats, self.batch_size, self.device,
                              view=view).numpy()


class OnnxModel:
    """An exported ``model.onnx``: float32 (N, 1, 28, 28) pixels in [0, 1] -> logits; the
    normalization is in the graph, the model's name and view in its metadata."""

    def __init__(self, path: Path, batch_size: int, threads: int = 0):
        try:
            import onnxruntime as ort
        except ImportError:
            raise UserError("ONNX Runtime is not installed: pip install onnxruntime "
                            "(`make install` does)") from None
        if not path.is_file():
            raise UserError(f"{path}: no such file")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = threads  # 0: ONNX Runtime's own choice
        try:
            self.session = ort.InferenceSession(str(path), options,
                                                providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own, unexported, types
            raise UserError(f"{path} is not a loadable ONNX model "
                            f"({first_line(exc, 80)})") from None
        try:
            self.meta = json.loads(self.session.get_modelmeta()
                                   .custom_metadata_map[ONNX_META_KEY])
            self.name = self.meta["model"]
        except (KeyError, TypeError, json.JSONDecodeError):
            raise UserError(f"{path} is an ONNX model, but not one this project "
                            "exported (no fmnist metadata)") from None
        self.input = check_contract(self.session, path)
        self.batch_size = batch_size

    def _run(self, x: np.ndarray) -> np.ndarray:
        out = [self.session.run(None, {self.input: x[i:i + self.batch_size]})[0]
               for i in range(0, len(x), self.batch_size)]
        return np.concatenate(out) if out else np.empty((0, len(CLASSES)), np.float32)

    def logits(self, images: np.ndarray, view: str) -> np.ndarray:
        x = images[:, None].astype(np.float32) / np.float32(255)
        out = self._run(x)
        if view == MIRROR:
            out = (out + self._run(np.ascontiguousarray(x[..., ::-1]))) / np.float32(2)
        return out


# The ONNX contract: what `package` exports and what this reads
ONNX_INPUT = ("tensor(float)", (1, 28, 28))  # float32 (N, 1, 28, 28), pixels / 255
ONNX_OUTPUT = ("tensor(float)", (len(CLASSES),))  # (N, 10) logits
ONNX_CONTRACT = ("one float32 input `(N, 1, 28, 28)` (N symbolic: any batch) of pixels / "
                 "255 (the input "
                 f"normalization is inside the graph) and one output of the {len(CLASSES)} "
                 "logits")


def check_contract(session: Any, path: Path) -> str:
    """The input's name, where the graph keeps the contract (one float32 input
    ``(N, 1, 28, 28)``, one float32 output ``(N, 10)``); else a UserError."""
    ins, outs = session.get_inputs(), session.get_outputs()

    def fits(arg: Any, want: tuple[str, tuple[int, ...]]) -> bool:
        shape = list(arg.shape)  # the batch axis first: symbolic (any N), never fixed
        return arg.type == want[0] and tuple(shape[1:]) == want[1] \
            and len(shape) == len(want[1]) + 1 and not isinstance(shape[0], int)

    if len(ins) != 1 or len(outs) != 1 or not fits(ins[0], ONNX_INPUT) \
            or not fits(outs[0], ONNX_OUTPUT):
        got = "; ".join(f"{a.name} {a.type} {list(a.shape)}" for a in [*ins, *outs])
        raise UserError(f"{path} does not keep the contract ({ONNX_CONTRACT}): it has "
                        f"{got}")
    return ins[0].name


def open_model(path: str | Path, batch_size: int = 1000) -> Model:
    path = Path(path)
    if path.is_dir():
        return TorchModel(path, batch_size)
    if path.suffix.lower() == ".onnx":
        return OnnxModel(path, batch_size)
    if not path.exists():
        raise UserError(f"{path}: no such model folder or ONNX file")
    raise UserError(f"{path}: a model is a folder (model.pt and meta.json) or an .onnx file")


def params_view(params_file: Path) -> str | None:
    """``evaluate.tta`` of a params file (None where it has none); a file that does not
    parse, or whose ``evaluate.tta`` is not a view, is a UserError: never a silent
    fallback."""
    from fmnist.params import read_params

    evaluate = read_params(params_file).get("evaluate")
    tta = evaluate.get("tta") if isinstance(evaluate, dict) else None
    if tta is not None and tta not in VIEWS:
        raise UserError(f"{params_file}: evaluate.tta is {str(tta)[:40]!r}, not one of "
                        f"{', '.join(VIEWS)}; fix it or give --tta")
    return tta


def default_view(model: Model, params_file: Path | None) -> str:
    """The model's recorded view, else the params file's ``evaluate.tta`` (``--params``,
    else ./params.yaml where there is one), else a single view. A ``--params`` given is
    read, and refused when it does not parse, whichever view wins."""
    recorded = model.meta.get("tta")
    path = params_file or Path("params.yaml")
    tta = None
    if params_file is not None or (recorded not in VIEWS and path.is_file()):
        tta = params_view(path)
    if recorded in VIEWS:
        return recorded
    return tta or SINGLE


def softmax(logits: np.ndarray) -> np.ndarray:
    """In float64, as ``evaluate`` computes its probabilities."""
    z = logits.astype(np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


@dataclass(frozen=True)
class Prediction:
    file: str
    top: list[tuple[str, float]]  # (class, probability), most probable first

    @property
    def label(self) -> str:
        return self.top[0][0]


def predict(model: Model, items: list[Item], view: str,
            top: int) -> tuple[list[Prediction], list[str]]:
    """The predictions, and one error line per input whose logits are not finite (a
    model with NaN weights answers nothing, never `nan`)."""
    if not items:
        return [], []
    logits = model.logits(np.stack([i.image for i in items]), view)
    finite = np.isfinite(logits).all(axis=1)
    probs = softmax(np.where(finite[:, None], logits, 0))
    order = np.argsort(-probs, axis=1, kind="stable")[:, :top]
    # argsort's first is argmax's (the first of equal maxima), as evaluate's
    preds = [Prediction(item.name, [(CLASSES[c], float(p[c])) for c in row])
             for item, p, row, ok in zip(items, probs, order, finite, strict=True) if ok]
    errors = [f"{item.name}: the model's output is not finite (NaN or infinite logits): "
              "its weights are damaged" for item, ok in zip(items, finite, strict=True)
              if not ok]
    return preds, errors


# ---------------------------------------------------------------- output


def as_table(preds: list[Prediction], top: int) -> str:
    heads = ["file", "class", "probability"]
    for k in range(2, top + 1):
        heads += ["runner-up" if k == 2 else f"#{k}", "probability"]
    rows = [[p.file] + [f for c, q in p.top for f in (c, f"{q:.3f}")] for p in preds]
    widths = [max(len(r[i]) for r in [heads, *rows]) for i in range(len(heads))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(heads, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=False)).rstrip()
              for r in rows]
    return "\n".join(lines) + "\n"


def as_csv(preds: list[Prediction], top: int) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    heads = ["file", "class", "probability"]
    for k in range(2, top + 1):
        heads += [f"class_{k}", f"probability_{k}"]
    w.writerow(heads)
    w.writerows([p.file] + [f for c, q in p.top for f in (c, repr(q))] for p in preds)
    return buf.getvalue()


def as_json(preds: list[Prediction], model: Model, view: str, errors: list[str]) -> str:
    return json.dumps({
        "model": model.name, "view": view,
        "predictions": [{"file": p.file, "class": p.label, "probability": p.top[0][1],
                         "top": [{"class": c, "probability": q} for c, q in p.top]}
                        for p in preds],
        "errors": errors,
    }, indent=1) + "\n"


def run(model_path: Path, inputs: list[str], view: str | None, convert: bool, top: int,
        fmt: str, batch_size: int, params_file: Path | None) -> int:
    """The command: predictions on stdout, one line per failed input on stderr; exit
    code 1 when any input failed (the others are still reported)."""
    if not 1 <= top <= len(CLASSES):
        raise UserError(f"--top must be between 1 and {len(CLASSES)}")
    if batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    if sys.stdout is None or sys.stdout.closed:
        raise UserError("stdout is closed: the predictions have nowhere to go")
    model = open_model(model_path, batch_size)
    view = view or default_view(model, params_file)
    items, errors = read_inputs(inputs, convert)
    preds, bad = predict(model, items, view, top)
    errors += bad
    out = {"table": lambda: as_table(preds, top) if preds else "",
           "csv": lambda: as_csv(preds, top),
           "json": lambda: as_json(preds, model, view, errors)}[fmt]()
    for stream in (sys.stdout, sys.stderr):  # a file name no encoding can print
        if stream is not None and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    try:
        sys.stdout.write(out)
        sys.stdout.flush()
    except OSError as exc:
        if isinstance(exc, BrokenPipeError):
            raise
        raise UserError(f"cannot write the predictions to stdout "
                        f"({exc.strerror or first_line(exc)})") from None
    for line in errors:
        print(f"fmnist predict: {line}", file=sys.stderr)
    return 1 if errors else 0
