"""The markdown report: the write-up's two tables per model, a comparison, per-class F1."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fmnist import CLASSES
from fmnist.files import write_text
from fmnist.markdown import md, recipe_rows, table
from fmnist.views import LABELS, MIRROR, SINGLE, VIEWS

Row = tuple[str, Callable[[dict[str, Any]], str]]

# The write-up's results table: the same rows per model and side by side
RESULTS_ROWS: tuple[Row, ...] = (
    ("Trainable Parameters", lambda m: f"{m['trainable_params']:,}"),
    ("Training Loss", lambda m: f"{m['train']['loss']:.4f}"),
    ("Training Accuracy", lambda m: f"{m['train']['accuracy']:.4f}"),
    ("Test Loss", lambda m: f"{m['test']['loss']:.4f}"),
    ("Test Accuracy", lambda m: f"{m['test']['accuracy']:.4f}"),
)
COMPARISON_ROWS: tuple[Row, ...] = (
    *RESULTS_ROWS,
    ("Test macro F1", lambda m: f"{m['test']['macro_f1']:.4f}"),
    ("Test top-2 accuracy", lambda m: f"{m['test']['top2_accuracy']:.4f}"),
    ("Epochs", lambda m: str(m["epochs"])),
)


def rows(spec: tuple[Row, ...], ms: list[dict[str, Any]]) -> list[list[str]]:
    return [[label, *(fmt(m) for m in ms)] for label, fmt in spec]


def views_note(m: dict[str, Any]) -> list[str]:
    """Which view of the test set the headline numbers are, and the other one."""
    v = m.get("test_views")
    if not v:
        return []
    head = ("the mean of the logits of each test image and its mirror image (test-time "
            f"augmentation, `evaluate.tta: {MIRROR}`)" if v["headline"] == MIRROR
            else f"each test image once (`evaluate.tta: {SINGLE}`)")
    scores = ", ".join(f"{LABELS[k]} {v[k]['accuracy']:.4f}" for k in VIEWS)
    return [f"Test figures above: {head}. Test accuracy {scores}.", ""]


def data_note(counts: dict[str, int] | None) -> list[str]:
    if not counts:
        return []
    if counts.get("val", 0) == 0:
        return [f"Trained on all {counts.get('train', 0):,} training images (the final "
                "refit: no validation split, so no validation figures).", ""]
    return [f"Trained on {counts.get('train', 0):,} training images; {counts['val']:,} held "
            "out for validation (the curves' validation figures).", ""]


FIGURE_CAPTIONS = {"confusion": "confusion matrix", "curves": "training curves",
                   "misclassified": "most confident mistakes"}


def figure_links(name: str, written: list[str], folder: str = "figures") -> list[str]:
    """Links to the figures that were written, and to no other; ``folder`` is where
    they are, relative to the report."""
    links = []
    for kind, caption in FIGURE_CAPTIONS.items():
        fname = f"{name}_{kind}.png"
        if fname in written:
            links.append(f"![{caption}]({folder}/{fname})")
    return [" ".join(links)] if links else []


def render(results: list[dict[str, Any]], counts: dict[str, int] | None = None,
           figures: str = "figures") -> str:
    out = ["# Fashion-MNIST results", "",
           "Written by the `evaluate` stage from the checkpoints and params of this commit; "
           "compare commits with `dvc metrics diff`. Training times are in the timings "
           "metrics (they are not results: `dvc metrics show` lists them).",
           "", *data_note(counts)]
    for r in results:
        m, meta, name = r["metrics"], r["meta"], r["name"]
        out += [f"## {md(meta['title'])}", "", "### Hyperparameters", ""]
        out += [table(["Hyperparameter", "Value"], recipe_rows(meta["params"]), "ll")]
        out += ["", "### Results", ""]
        out += [table(["Metric", "Value"], rows(RESULTS_ROWS, [m]))]
        out += ["", *views_note(m)]
        out += ["", *figure_links(name, r.get("figures", []), figures), ""]

    titles = [md(r["meta"]["title"]) for r in results]
    ms = [r["metrics"] for r in results]
    out += ["## Side by side", ""]
    out += [table(["", *titles], rows(COMPARISON_ROWS, ms))]
    out += ["", "## Per-class F1 (test)", ""]
    out += [table(["Class", *titles],
                  [[c, *(f"{m['test']['per_class'][c]['f1']:.3f}" for m in ms)]
                   for c in CLASSES])]
    return "\n".join(out) + "\n"


def write_report(results: list[dict[str, Any]], path: Path, counts: dict[str, int],
                 fig_dir: Path, final: Path | None = None) -> None:
    """Write the report to ``path``; its links to ``fig_dir`` are relative to where the
    report will live (``final``, where ``path`` is a temporary name beside it)."""
    folder = Path(os.path.relpath(fig_dir, (final or path).parent)).as_posix()
    write_text(path, render(results, counts, folder))
