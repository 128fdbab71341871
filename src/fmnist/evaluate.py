"""Evaluation: scikit-learn metrics, DVC plot data, figures and the markdown report.

Only this module reads the test split. Every number comes from scikit-learn
(classification_report, confusion_matrix, log_loss, top_k_accuracy_score).
"""

from __future__ import annotations

import csv
import io
import json
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

from fmnist import CLASSES
from fmnist.checkpoint import load_checkpoint, predict_logits
from fmnist.common import write_json, write_text
from fmnist.data import Split, Stats, load_split
from fmnist.params import EvaluateParams
from fmnist.runtime import resolve_device

LABELS = list(range(len(CLASSES)))


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


def probabilities(model: torch.nn.Module, split: Split, meta: dict[str, Any],
                  params: EvaluateParams, device: torch.device,
                  hflip: bool = False) -> np.ndarray:
    norm = meta.get("normalize")
    stats = Stats(norm["mean"], norm["std"]) if norm else None
    logits = predict_logits(model.to(device), split, stats, params.batch_size, device,
                            hflip=hflip)
    return torch.softmax(logits.double(), dim=1).numpy()


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


def write_figures(name: str, title: str, cm: np.ndarray, test: Split, probs: np.ndarray,
                  params: EvaluateParams, out: Path) -> list[str]:
    """The PNGs of one model; returns which were written (file names in figures/)."""
    from fmnist import figures

    fig_dir, written = out / "figures", [f"{name}_confusion.png"]
    figures.confusion_heatmap(cm, f"{title}: confusion (test)", fig_dir / written[0])
    if params.misclassified:
        written.append(f"{name}_misclassified.png")
        figures.misclassified_grid(test.images.numpy(), test.labels.numpy(), probs,
                                   params.misclassified, f"{title}: most confident mistakes",
                                   fig_dir / written[-1])
    curves = out / "curves" / f"{name}.tsv"
    if curves.exists() and figures.training_curves(curves, title,
                                                   fig_dir / f"{name}_curves.png"):
        written.append(f"{name}_curves.png")
    return written


def evaluate_model(name: str, model_dir: Path, prepared: Path, params: EvaluateParams,
                   out: Path, device: torch.device) -> dict[str, Any]:
    model, meta = load_checkpoint(model_dir, f"train-{name}")
    train, test = load_split(prepared, "train"), load_split(prepared, "test")
    train_probs = probabilities(model, train, meta, params, device)
    # Both views of the test set, always: the headline is the one params.tta names
    views = {view: probabilities(model, test, meta, params, device, hflip=view == "hflip")
             for view in ("none", "hflip")}
    test_probs = views[params.tta]
    y_train, y_test = train.labels.numpy(), test.labels.numpy()
    train_scores = scores(y_train, train_probs)
    test_scores = scores(y_test, test_probs)
    pred = test_probs.argmax(1)
    cm = confusion_matrix(y_test, pred, labels=LABELS)

    write_confusion_csv(out / "confusion" / f"{name}.csv", y_test, pred)
    figures_written = write_figures(name, meta["title"], cm, test, test_probs, params, out)
    metrics = {
        "trainable_params": meta["trainable_params"],
        "epochs": meta["epochs"],
        "train": {"loss": train_scores["loss"], "accuracy": train_scores["accuracy"]},
        "val": last_validation(meta),
        "test": test_scores,
        "test_views": {"headline": params.tta, **{
            ("single" if view == "none" else view): {
                "accuracy": float(accuracy_score(y_test, probs.argmax(1))),
                "loss": float(log_loss(y_test, probs, labels=LABELS))}
            for view, probs in views.items()}},
    }
    write_json(out / f"{name}.json", metrics)
    return {"name": name, "meta": meta, "metrics": metrics, "confusion": cm.tolist(),
            "figures": figures_written}


def split_counts(prepared: Path) -> dict[str, int]:
    """Images per split, as preprocess wrote them (val 0: the final refit on all 60,000)."""
    counts = json.loads((prepared / "stats.json").read_text()).get("counts", {})
    return {k: int(v) for k, v in counts.items()}


def evaluate(models: list[str], params: EvaluateParams, prepared: str | Path = "data/prepared",
             models_dir: str | Path = "models", out: str | Path = "metrics") -> list[dict]:
    from fmnist.report import write_report

    out, prepared, models_dir = Path(out), Path(prepared), Path(models_dir)
    device = resolve_device(params.device)
    results = [evaluate_model(m, models_dir / m, prepared, params, out, device) for m in models]
    write_report(results, out / "report.md", split_counts(prepared))
    return results
