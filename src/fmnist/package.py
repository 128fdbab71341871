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
from fmnist.models import spec
from fmnist.params import EvaluateParams, PackageParams
from fmnist.predict import VIEWS
from fmnist.runtime import pin_numerics
from fmnist.summary import layer_table

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
        numbers += [views[v][k] for v in ("single", "hflip") for k in ("accuracy", "loss")]
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
    first = models[0].out
    with OutputSet(first.with_name(f".{first.name}.commit.json"),
                   [m.out for m in models]) as staged:
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
            write_text(tmp / "README.md", card(meta, metrics, confused, counts, agreement,
                                               params, m.out.name))
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


def card(meta: dict[str, Any], metrics: dict[str, Any], confused: Counter[tuple[str, str]],
         counts: dict[str, int], agreement: Agreement, params: PackageParams,
         folder: str) -> str:
    """The model card, in markdown."""
    from fmnist.models import build_model

    name, title = meta["model"], meta["title"]
    test, views = metrics["test"], metrics["test_views"]
    headline = views["headline"]
    per_class = test["per_class"]
    model = build_model(name, meta.get("arch"), where="arch", source="meta.json")
    lines = [
        f"# {title} for Fashion-MNIST",
        "",
        "<!-- Generated by the pipeline's `package` stage from meta.json, the test "
        "metrics and the ONNX check; do not edit. -->",
        "",
        f"A {title} that classifies 28x28 grayscale images of clothing into the 10 "
        "classes of Fashion-MNIST: " + ", ".join(CLASSES) + ". "
        f"Test accuracy **{fmt4(test['accuracy'])}** on the {counts['test']:,} images of the "
        "test split (" + ("the mean of each image and its mirror image" if headline == "hflip"
                          else "one view per image") + ").",
        "",
        "| File | What it is |",
        "|---|---|",
        "| `model.pt` | PyTorch state dict (load with `fmnist.checkpoint.load_checkpoint`, "
        "or `fmnist predict`) |",
        "| `meta.json` | architecture, input normalization, the training params, the "
        "test-time view |",
        f"| `model.onnx` | ONNX (opset {params.opset}): float32 `(N, 1, 28, 28)` pixels / 255 "
        "in, 10 logits out; normalization inside |",
        "| `README.md` | this card |",
        "",
        "## Architecture",
        "",
        layer_table(model, title),
        "",
        "The network outputs logits; apply a softmax for probabilities.",
        "",
        "## Training data",
        "",
        "[Fashion-MNIST](https://github.com/zalandoresearch/fashion-mnist) (Xiao, Rasul "
        "and Vollgraf, 2017): Zalando product photos, trimmed, resized to 28x28, "
        "negated and grayscale. This model was trained on "
        f"{counts['train']:,} images"
        + (f" (with {counts['val']:,} held out for validation)" if counts.get("val")
           else " (the whole training split, no validation split held out)")
        + f" and tested once on the {counts['test']:,} test images, used for nothing else.",
        "",
        "## Recipe",
        "",
        "| Param | Value |",
        "|---|---|",
        *[f"| {k} | `{v}` |" for k, v in recipe(meta).items()],
        "",
        "## Test results",
        "",
        "| View | Accuracy | Loss |",
        "|---|---:|---:|",
        *[f"| {label}{' (headline)' if key == headline else ''} | "
          f"{fmt4(views[label]['accuracy'])} | {fmt4(views[label]['loss'])} |"
          for label, key in (("single", "none"), ("hflip", "hflip")) if label in views],
        "",
        f"Headline view: macro F1 {fmt4(test['macro_f1'])}, weighted F1 "
        f"{fmt4(test['weighted_f1'])}, top-2 accuracy {fmt4(test['top2_accuracy'])}; on the "
        f"training images: accuracy {fmt4(metrics['train']['accuracy'])}, loss "
        f"{fmt4(metrics['train']['loss'])}.",
        "",
        "| Class | Precision | Recall | F1 |",
        "|---|---:|---:|---:|",
        *[f"| {c} | {fmt4(per_class[c]['precision'])} | {fmt4(per_class[c]['recall'])} | "
          f"{fmt4(per_class[c]['f1'])} |" for c in CLASSES],
        "",
        "Weakest classes, and what they are mistaken for (test images):",
        "",
        *[f"- **{c}** (F1 {fmt4(f1)}): "
          + (", ".join(f"{other} {k}" for other, k in wrong) or "no mistakes")
          for c, f1, wrong in weakest(metrics, confused)],
        "",
        "## The ONNX export",
        "",
        f"ONNX Runtime against PyTorch (fp32, single view) on all {agreement.images:,} test "
        f"images: the same class for {agreement.same_class:,}, every logit within "
        f"{agreement.bound:g} (allowed: < {params.max_logit_diff:g}). The "
        "graph takes float32 `(N, 1, 28, 28)` pixels / 255 (the input normalization is "
        "inside), returns the 10 logits, and names the model, its classes and test-time "
        "view in its metadata (key `fmnist`).",
        "",
        "## Intended use and limits",
        "",
        "- For: images like the data set's — one garment, shoe or bag, photographed as a "
        "product on a plain background, as a 28x28 grayscale image with a light object "
        "on black. `fmnist predict` converts other pictures the data set's way "
        "(grayscale, invert a light background, trim, resize, centre).",
        "- Not for: photos of people wearing clothes, street or cluttered scenes, "
        "several objects at once, classes outside the ten, or any decision about "
        "people; nothing safety-related. It always answers one of the ten classes, "
        "however unlike them the input is: a low probability is the only warning.",
        "- Its weakest classes are listed above with what they are mistaken for: an "
        "answer among those classes deserves the least trust.",
        "",
        "## Licences",
        "",
        "- Data: Fashion-MNIST, MIT licence, Copyright (c) 2017 Zalando SE.",
        "- Code and these weights: MIT licence (the project's `LICENSE`).",
        "",
        "## Use and reproduce",
        "",
        "```sh",
        f"fmnist predict {folder} shoe.jpg photos/     # PyTorch",
        f"fmnist predict {folder}/model.onnx shoe.jpg  # ONNX Runtime, no torch needed",
        f"make reproduce STAGES={spec(name).stage}  # in a clone of the project: re-train, "
        "compare bit for bit",
        "```",
        "",
    ]
    return "\n".join(lines)


def recipe(meta: dict[str, Any]) -> dict[str, Any]:
    """The training params that ran, as the card lists them."""
    p = meta["params"]
    augment = p.get("augment", {})
    out = {
        "epochs": p["epochs"], "batch size": p["batch_size"],
        "optimizer": p["optimizer"], "learning rate": p["lr"],
        "weight decay": p["weight_decay"], "schedule": p["schedule"],
        "warm-up (of the run)": p["warmup"], "label smoothing": p["label_smoothing"],
        "weight EMA": p["ema"], "input normalization": p["normalize"],
        "augmentation": ", ".join(f"{k} {v}" for k, v in augment.items()) or "none",
        "precision": {"none": "fp32", "bf16": "bf16 mixed", "fp16": "fp16 mixed"}.get(
            p["amp"], p["amp"]),
        "device": meta.get("device", p["device"]),
        "processes": meta.get("world_size", 1),
        "seed": p["seed"],
    }
    return out
