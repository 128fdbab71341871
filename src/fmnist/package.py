"""The release folder of each model: ``dist/NAME/`` with everything a user needs.

    model.pt     the weights (a PyTorch state dict, as training wrote it)
    meta.json    training's meta.json plus the test-time view ``evaluate`` reported (tta)
    model.onnx   the ONNX export, checked against PyTorch on the whole test split
    README.md    the model card, generated from the files above and the test metrics

The folders are built aside and swapped in together. Every number in the card comes
from ``meta.json``, the metrics JSON, the confusion CSV, the prepared data's
``stats.json`` (split sizes), the ONNX check or ``params.yaml``'s ``package`` section:
nothing holds a time, host or path.
"""

from __future__ import annotations

import csv
import json
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fmnist import CLASSES
from fmnist.checkpoint import load_checkpoint
from fmnist.common import UserError
from fmnist.data import load_split, read_stats
from fmnist.export import Agreement, check_onnx, export_onnx
from fmnist.files import OutputSet, write_json, write_text
from fmnist.markdown import recipe_rows, render, table
from fmnist.models import spec
from fmnist.params import EvaluateParams, PackageParams
from fmnist.runtime import pin_numerics
from fmnist.summary import layer_table
from fmnist.views import LABELS, VIEWS

FILES = ("model.pt", "meta.json", "model.onnx", "README.md")
WEAKEST = 3  # classes the card names as the weakest, by F1


@dataclass(frozen=True)
class ReleasePaths:
    """What ``package`` reads and writes for one model: given in dvc.yaml's cmd."""

    name: str
    checkpoint: Path  # the model folder (input)
    metrics: Path     # evaluate's metrics JSON (input)
    confusion: Path   # evaluate's per-image predictions (input)
    out: Path         # the release folder (output)


def read_metrics(path: Path) -> dict[str, Any]:
    """evaluate's metrics JSON, checked for what the card reads: the test scores, every
    class's precision, recall and F1, and the views; else one line naming the file
    and the stage that writes it."""
    fix = "run `dvc repro evaluate`"
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
        numbers = [m["test"][k] for k in ("accuracy", "loss", "macro_f1")]
        numbers += [m["test"]["per_class"][c][k] for c in CLASSES
                    for k in ("precision", "recall", "f1")]
        views = m["test_views"]
        numbers += [views[v][k] for v in VIEWS for k in ("accuracy", "loss")]
        numbers += [m["train"][k] for k in ("loss", "accuracy")]
        if views["headline"] not in VIEWS or not all(
                isinstance(x, int | float) and not isinstance(x, bool) for x in numbers):
            raise TypeError("a value of the wrong type")
        return m
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is missing or unreadable ({type(exc).__name__}): {fix}") \
            from None
    except (KeyError, TypeError) as exc:
        raise UserError(f"{path} is not evaluate's metrics ({type(exc).__name__}: "
                        f"{str(exc)[:60]}): {fix}") from None


def confusions(path: Path) -> Counter[tuple[str, str]]:
    """(actual, predicted) -> test images, from evaluate's confusion CSV."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            pairs = Counter((r["actual"], r["predicted"]) for r in csv.DictReader(f))
        unknown = {c for pair in pairs for c in pair} - set(CLASSES)
        if unknown:
            raise KeyError(f"unknown class {sorted(unknown)[0]!r}")
        return pairs
    except (OSError, KeyError, csv.Error, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is missing or unreadable ({type(exc).__name__}): "
                        "run `dvc repro evaluate`") from None


def package(models: list[ReleasePaths], prepared: Path, params: PackageParams,
            evaluation: EvaluateParams) -> list[Agreement]:
    # the ONNX check's PyTorch side runs in evaluate's numerics (``evaluate.numerics``)
    pin_numerics(evaluation.numerics, evaluation.threads, torch.device("cpu"))
    test = load_split(prepared, "test")
    counts = read_stats(prepared)["counts"]
    loaded = [(load_checkpoint(m.checkpoint, m.name),
               read_metrics(m.metrics), confusions(m.confusion))
              for m in models]  # everything checked before anything is written
    out = []
    with OutputSet.beside([m.out for m in models]) as staged:
        for m, ((model, meta), metrics, confused) in zip(models, loaded, strict=True):
            tmp = staged.dir(m.out)
            # the view evaluate reported, as the card states it
            tta = metrics["test_views"]["headline"]
            shutil.copyfile(m.checkpoint / "model.pt", tmp / "model.pt")
            write_json(tmp / "meta.json", {**meta, "tta": tta})
            export_onnx(model, meta, tta, tmp / "model.onnx", params.opset)
            agreement = check_onnx(tmp / "model.onnx", model, meta, test,
                                   evaluation.batch_size, params.max_logit_diff,
                                   evaluation.threads)
            write_text(tmp / "README.md", card(model, meta, metrics, confused, counts,
                                               agreement, params, m.out.name))
            out.append(agreement)
    return out


# ---------------------------------------------------------------- the card


def fmt4(x: float) -> str:
    """A score as the card prints it: four decimals."""
    return f"{x:.4f}"


def weakest(metrics: dict[str, Any], confused: Counter[tuple[str, str]],
            n: int = WEAKEST) -> list[tuple[str, float, list[tuple[str, int]]]]:
    """The ``n`` classes of lowest test F1, each with the classes it is most often
    predicted as instead (and how many test images)."""
    per_class = metrics["test"]["per_class"]
    worst = sorted(CLASSES, key=lambda c: (per_class[c]["f1"], c))[:n]
    out = []
    for c in worst:
        wrong = sorted(((p, k) for (a, p), k in confused.items() if a == c and p != c),
                       key=lambda pk: (-pk[1], pk[0]))[:3]
        out.append((c, per_class[c]["f1"], wrong))
    return out


def hub_metadata(meta: dict[str, Any], metrics: dict[str, Any]) -> dict[str, Any]:
    """The card's YAML header, as model hubs read it (Hugging Face's model card
    metadata): licence, library, data set, tags and ``model-index`` with the test
    results per view, the headline view first."""
    views = metrics["test_views"]
    return {
        "license": "mit",
        "library_name": "pytorch",
        "pipeline_tag": "image-classification",
        "tags": ["image-classification", "fashion-mnist", meta["model"], "onnx", "dvc"],
        "datasets": ["zalando-datasets/fashion_mnist"],
        "metrics": ["accuracy"],
        "model-index": [{
            "name": f"fmnist-{meta['model']}",
            "results": [{
                "task": {"type": "image-classification", "name": "Image Classification"},
                "dataset": {"name": "Fashion-MNIST", "type": "zalando-datasets/fashion_mnist",
                            "split": "test"},
                "metrics": [{"type": "accuracy", "name": f"Test accuracy ({label})",
                             "value": round(views[key]["accuracy"], 4)}
                            for key, label in sorted(  # the headline view first
                                LABELS.items(), key=lambda kv: kv[0] != views["headline"])],
            }],
        }],
    }


def card(model: Any, meta: dict[str, Any], metrics: dict[str, Any],
         confused: Counter[tuple[str, str]], counts: dict[str, int], agreement: Agreement,
         params: PackageParams, folder: str) -> str:
    """The model card: ``templates/model_card.md.j2`` filled with this model's data and
    the Hub metadata header. ``model`` is the one ``package`` loaded."""
    import yaml

    from fmnist.predict import ONNX_CONTRACT, ONNX_META_KEY

    test, views = metrics["test"], metrics["test_views"]
    headline = views["headline"]
    view_rows = [[f"{key}{' (headline)' if key == headline else ''}",
                  fmt4(views[key]["accuracy"]), fmt4(views[key]["loss"])] for key in VIEWS]
    class_rows = [[c, *(fmt4(test["per_class"][c][k]) for k in ("precision", "recall", "f1"))]
                  for c in CLASSES]
    numerics = meta.get("numerics") or {}
    return render(
        "model_card.md.j2",
        metadata=yaml.safe_dump(hub_metadata(meta, metrics), sort_keys=False),
        title=meta["title"], classes=CLASSES, test=test, train=metrics["train"],
        headline=headline, counts=counts, opset=params.opset,
        contract=ONNX_CONTRACT, onnx_key=ONNX_META_KEY,
        layers=layer_table(model, meta["title"]),
        recipe=table(["Param", "Value"], recipe_rows(meta["params"], meta), "ll"),
        views_table=table(["View", "Accuracy", "Loss"], view_rows),
        classes_table=table(["Class", "Precision", "Recall", "F1"], class_rows),
        weakest=weakest(metrics, confused), agreement=agreement,
        max_logit_diff=params.max_logit_diff, folder=folder, stage=spec(meta["model"]).stage,
        numerics=numerics.get("tier") or numerics.get("mode", "native"))
