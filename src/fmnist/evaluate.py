"""Evaluation: scikit-learn metrics, DVC plot data, figures and the markdown report.

The test split is scored here; nothing is chosen on it (package's ONNX check and
``fmnist reproduce``'s verdict read it too, to compare, not to choose). The training
loss and accuracy come from the training stage (``meta.json``'s ``train_scores``).
Every number comes from scikit-learn
(classification_report, confusion_matrix, log_loss, top_k_accuracy_score).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import (
    accuracy_score,
    classification_report,
    confusion_matrix,
    log_loss,
    top_k_accuracy_score,
)

from fmnist import CLASSES, NUM_CLASSES
from fmnist.checkpoint import load_checkpoint
from fmnist.common import UserError
from fmnist.data import Split, load_split, read_stats
from fmnist.files import OutputSet, write_json, write_text
from fmnist.inference import input_stats, predict_views
from fmnist.params import EvaluateParams
from fmnist.runtime import keep_freed_memory, pin_numerics, resolve_device

LABELS = list(range(NUM_CLASSES))


@dataclass(frozen=True)
class ModelPaths:
    """What ``evaluate`` reads and writes for one model: given in dvc.yaml's cmd."""

    name: str
    checkpoint: Path  # the model folder (input)
    curves: Path      # its training curves (input, for the figure)
    metrics: Path     # metrics JSON (output)
    confusion: Path   # one row per test image, for DVC's confusion plot (output)


def scores(labels: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
    """Loss, accuracy, F1s, top-2 accuracy and per-class precision/recall/F1."""
    pred = probs.argmax(1)
    report = classification_report(labels, pred, labels=LABELS, target_names=list(CLASSES),
                                   output_dict=True, zero_division=0)
    return {
        "loss": float(log_loss(labels, probs, labels=LABELS)),
        "accuracy": float(accuracy_score(labels, pred)),
        "macro_f1": float(report["macro avg"]["f1-score"]),
        "weighted_f1": float(report["weighted avg"]["f1-score"]),
        "top2_accuracy": float(top_k_accuracy_score(labels, probs, k=2, labels=LABELS)),
        "per_class": {name: {"precision": float(report[name]["precision"]),
                             "recall": float(report[name]["recall"]),
                             "f1": float(report[name]["f1-score"])} for name in CLASSES},
    }


def view_probabilities(model: torch.nn.Module, split: Split, meta: dict[str, Any],
                       params: EvaluateParams, device: torch.device) -> dict[str, np.ndarray]:
    """``probabilities`` of every test-time view, from one pass over ``split``."""
    views = predict_views(model.to(device), split, input_stats(meta), params.batch_size,
                          device)
    return {v: torch.softmax(logits.double(), dim=1).numpy() for v, logits in views.items()}


def write_confusion_csv(path: Path, labels: np.ndarray, pred: np.ndarray) -> None:
    """One row per test image, as DVC's `confusion` template expects."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["actual", "predicted"])
    w.writerows((CLASSES[a], CLASSES[p]) for a, p in zip(labels, pred, strict=True))
    write_text(path, buf.getvalue())


def last_validation(meta: dict[str, Any]) -> dict[str, float | None]:
    """The last epoch's validation loss and accuracy, as training recorded them (None
    where there was no validation split)."""
    final = meta.get("final", {})
    out = {}
    for key in ("loss", "accuracy"):
        value = final.get(f"val_{key}")
        out[key] = value if isinstance(value, float) and value == value else None
    return out


def write_figures(m: ModelPaths, title: str, cm: np.ndarray, test: Split, probs: np.ndarray,
                  params: EvaluateParams, fig_dir: Path) -> list[str]:
    """The PNGs of one model; returns which were written (file names in ``fig_dir``)."""
    from fmnist import figures

    written = [f"{m.name}_confusion.png"]
    figures.confusion_heatmap(cm, f"{title}: confusion (test)", fig_dir / written[0])
    if params.misclassified:
        written.append(f"{m.name}_misclassified.png")
        figures.misclassified_grid(test.images.numpy(), test.labels.numpy(), probs,
                                   params.misclassified, f"{title}: most confident mistakes",
                                   fig_dir / written[-1])
    if m.curves.exists() and figures.training_curves(m.curves, title,
                                                     fig_dir / f"{m.name}_curves.png"):
        written.append(f"{m.name}_curves.png")
    return written


def training_scores(meta: dict[str, Any], checkpoint: Path) -> dict[str, float]:
    """The training loss and accuracy, as the training stage measured them after its
    last epoch (``fmnist.train.final_training_scores``): evaluate reads no training
    image."""
    got = meta.get("train_scores")
    if not isinstance(got, dict) or not all(
            isinstance(got.get(k), float) for k in ("loss", "accuracy")):
        raise UserError(f"{checkpoint / 'meta.json'} records no training loss and accuracy "
                        "(train_scores): it was made by older code; re-run its training "
                        "stage (`dvc repro`)")
    return {"loss": got["loss"], "accuracy": got["accuracy"]}


def evaluate_model(m: ModelPaths, model: torch.nn.Module, meta: dict[str, Any],
                   test: Split, params: EvaluateParams, out: OutputSet, fig_dir: Path,
                   device: torch.device) -> dict[str, Any]:
    """Score one loaded model; its files go to ``out``'s temporary paths (``fig_dir`` is
    the figures' temporary folder)."""
    y_test = test.labels.numpy()
    train_scores = training_scores(meta, m.checkpoint)
    # Both views of the test set, always: the headline is the one params.tta names
    views = view_probabilities(model, test, meta, params, device)
    view_scores = {view: scores(y_test, probs) for view, probs in views.items()}
    test_scores, test_probs = view_scores[params.tta], views[params.tta]
    pred = test_probs.argmax(1)
    cm = confusion_matrix(y_test, pred, labels=LABELS)

    write_confusion_csv(out.file(m.confusion), y_test, pred)
    figures_written = write_figures(m, meta["title"], cm, test, test_probs, params, fig_dir)
    metrics = {
        "trainable_params": meta["trainable_params"],
        "epochs": meta["epochs"],
        "train": train_scores,
        "val": last_validation(meta),
        "test": test_scores,
        "test_views": {"headline": params.tta, **{
            view: {"accuracy": s["accuracy"], "loss": s["loss"]}
            for view, s in view_scores.items()}},
    }
    write_json(out.file(m.metrics), metrics)
    return {"name": m.name, "meta": meta, "metrics": metrics, "confusion": cm.tolist(),
            "figures": figures_written}


def evaluate(models: list[ModelPaths], params: EvaluateParams, prepared: Path,
             fig_dir: Path, report: Path) -> list[dict]:
    """Every model and the data are loaded and checked before anything is written; then
    the metrics, confusion data, figures and report are built aside and swapped in as
    one set (a failure or a kill leaves the previous set)."""
    from fmnist.report import write_report

    device = resolve_device(params.device)
    pin_numerics(params.numerics, params.threads, device)
    # Batches of 1,000 allocate activations of up to 50 MB per layer: without this each
    # is mapped afresh and zero-filled, and the page faults took a third of the stage
    keep_freed_memory()
    test = load_split(prepared, "test")
    counts = read_stats(prepared)["counts"]
    loaded = [load_checkpoint(m.checkpoint, m.name) for m in models]
    targets = [report, fig_dir, *(p for m in models for p in (m.metrics, m.confusion))]
    with OutputSet.beside(targets) as out:
        figures = out.dir(fig_dir)
        results = [evaluate_model(m, model, meta, test, params, out, figures, device)
                   for m, (model, meta) in zip(models, loaded, strict=True)]
        write_report(results, out.file(report), counts, fig_dir, report)
    return results
