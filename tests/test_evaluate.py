"""Evaluation: scikit-learn's numbers, the metrics files, figures and the report.

The work folder after all five stages is built once per test run (``evaluated``)."""

import json
import re
import shutil

import numpy as np
import pytest
from sklearn.metrics import f1_score

from fmnist import CLASSES
from fmnist.evaluate import scores
from fmnist.markdown import recipe_rows as hyperparameters
from fmnist.report import render
from tests.support import run_stage, run_stages, set_params


def test_scores_against_hand_computed_values():
    labels = np.array([0, 1, 2, 2])
    probs = np.full((4, 10), 0.0)
    probs[0, 0] = probs[1, 2] = probs[2, 2] = probs[3, 3] = 0.7
    probs[0, 1] = probs[1, 1] = probs[2, 0] = probs[3, 2] = 0.3
    s = scores(labels, probs)
    assert s["accuracy"] == 0.5
    assert s["top2_accuracy"] == 1.0
    assert s["loss"] == pytest.approx(-(np.log(0.7) * 2 + np.log(0.3) * 2) / 4)
    assert s["per_class"]["Pullover"] == pytest.approx(
        {"precision": 0.5, "recall": 0.5, "f1": 0.5})
    assert s["macro_f1"] == pytest.approx(f1_score(labels, probs.argmax(1), average="macro",
                                                   labels=range(10), zero_division=0))
    assert list(s["per_class"]) == list(CLASSES)


def test_metrics_files(evaluated):
    for name in ("lenet", "alexnet"):
        m = json.loads((evaluated / f"metrics/{name}.json").read_text())
        assert set(m) == {"trainable_params", "epochs", "train", "val", "test",
                          "test_views"}  # no wall times
        assert 0.0 <= m["val"]["accuracy"] <= 1.0
        assert set(m["train"]) == {"loss", "accuracy"}
        for key in ("accuracy", "macro_f1", "weighted_f1", "top2_accuracy"):
            assert 0.0 <= m["test"][key] <= 1.0
        assert m["test"]["top2_accuracy"] >= m["test"]["accuracy"]
        assert set(m["test"]["per_class"]) == set(CLASSES)
        rows = (evaluated / f"metrics/confusion/{name}.csv").read_text().splitlines()
        assert rows[0] == "actual,predicted" and len(rows) == 201
        assert all(r.split(",")[0] in CLASSES for r in rows[1:])
        # the headline figures are those of the per-image predictions it wrote
        pairs = [r.split(",") for r in rows[1:]]
        assert m["test"]["accuracy"] == sum(a == p for a, p in pairs) / len(pairs)
        for c in CLASSES:
            hits = sum(a == p == c for a, p in pairs)
            said, truly = sum(p == c for _, p in pairs), sum(a == c for a, _ in pairs)
            assert m["test"]["per_class"][c]["recall"] == (hits / truly if truly else 0.0)
            assert m["test"]["per_class"][c]["precision"] == (hits / said if said else 0.0)
        # the training loss and accuracy are the training stage's, as it measured them
        meta = json.loads((evaluated / f"models/{name}/meta.json").read_text())
        assert m["train"] == meta["train_scores"]
        assert m["test_views"][m["test_views"]["headline"]]["accuracy"] \
            == m["test"]["accuracy"]


def png_pixels(path):
    import matplotlib.image
    return matplotlib.image.imread(path)


def test_figures(evaluated):
    figs = {p.name for p in (evaluated / "metrics/figures").iterdir()}
    for name in ("lenet", "alexnet"):
        assert {f"{name}_confusion.png", f"{name}_curves.png",
                f"{name}_misclassified.png"} <= figs
    for f in (evaluated / "metrics/figures").iterdir():
        img = png_pixels(f)
        h, w = img.shape[:2]
        assert h >= 200 and w >= 200, (f.name, img.shape)  # a real figure, not a stub
        # not blank: a good share of the pixels differ from the background (white)
        drawn = (np.abs(img[..., :3] - 1.0).sum(-1) > 0.1).mean()
        assert drawn > 0.02, (f.name, drawn)


def test_no_misclassified_grid_when_none_asked(evaluated):
    wd = evaluated
    shutil.rmtree(wd / "metrics/figures")
    set_params(wd, {"evaluate": {"misclassified": 0}})
    run_stages(wd, "evaluate")
    figs = {p.name for p in (wd / "metrics/figures").iterdir()}
    assert not any("misclassified" in f for f in figs)
    report = (wd / "metrics/report.md").read_text()
    assert "misclassified" not in report and "figures/lenet_curves.png" in report


def test_report_links_only_figures_that_exist(evaluated):
    from fmnist.report import figure_links
    assert figure_links("m", ["m_confusion.png"]) == [
        "![confusion matrix](figures/m_confusion.png)"]
    report = (evaluated / "metrics/report.md").read_text()
    for link in re.findall(r"\(figures/([^)]+)\)", report):
        assert (evaluated / "metrics/figures" / link).exists(), link


@pytest.mark.parametrize("damage", ["truncated", "empty", "bare tensor", "bad meta"])
def test_unreadable_checkpoint_is_one_line(evaluated, damage):
    import torch
    model_dir = evaluated / "models/lenet"
    weights = model_dir / "model.pt"
    if damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif damage == "empty":
        weights.write_bytes(b"")
    elif damage == "bare tensor":
        torch.save(torch.zeros(3), weights)
    else:
        (model_dir / "meta.json").write_text("{not json")
    proc = run_stage(evaluated, "evaluate")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "models/lenet/" in lines[0] and "dvc repro train-lenet" in lines[0]
    assert "dvc pull" in lines[0]


def test_report_has_the_write_ups_tables(evaluated):
    report = (evaluated / "metrics/report.md").read_text()
    m = json.loads((evaluated / "metrics/lenet.json").read_text())
    results = report.split("## LeNet-5")[1].split("### Results")[1].split("![")[0]
    table = [line for line in results.strip().splitlines() if line.startswith("|")]
    rows = [line.split("|")[1].strip() for line in table[2:]]
    assert rows == ["Trainable Parameters", "Training Loss", "Training Accuracy",
                    "Test Loss", "Test Accuracy"]
    assert f"| Test Accuracy | {m['test']['accuracy']:.4f} |" in results
    assert "### Hyperparameters" in report and "| Optimizer | adamw |" in report
    assert "## Side by side" in report and "| LeNet-5 | Scaled-down AlexNet |" in report
    assert "## Per-class F1 (test)" in report and "| Ankle boot |" in report
    assert "figures/alexnet_misclassified.png" in report


def test_both_views_of_the_test_set_are_reported(evaluated):
    import yaml
    tta = yaml.safe_load((evaluated / "params.yaml").read_text())["evaluate"]["tta"]
    m = json.loads((evaluated / "metrics/lenet.json").read_text())
    views = m["test_views"]
    assert views["headline"] == tta and m["test"]["accuracy"] == views[tta]["accuracy"]
    assert 0 <= views["hflip"]["accuracy"] <= 1 and 0 <= views["single"]["accuracy"] <= 1
    report = (evaluated / "metrics/report.md").read_text()
    assert f"single view {views['single']['accuracy']:.4f}" in report
    assert f"image + mirror {views['hflip']['accuracy']:.4f}" in report
    assert "held out for validation" in report
    # the other setting makes the other view the headline
    other = "single" if tta == "hflip" else "hflip"
    wd = evaluated
    set_params(wd, {"evaluate": {"tta": other}})
    run_stages(wd, "evaluate")
    m2 = json.loads((wd / "metrics/lenet.json").read_text())
    assert m2["test_views"] == {**views, "headline": other}
    assert m2["test"]["accuracy"] == views[other]["accuracy"]


def test_hflip_tta_averages_the_logits_of_the_image_and_its_mirror():
    import torch

    from fmnist.data import Split
    from fmnist.inference import predict_logits

    class Probe(torch.nn.Module):  # logits that tell an image from its mirror
        def forward(self, x):
            left, right = x[..., :14].sum((1, 2, 3)), x[..., 14:].sum((1, 2, 3))
            return torch.stack([left, right, *([torch.zeros_like(left)] * 8)], 1)

    images = torch.zeros(3, 28, 28, dtype=torch.uint8)
    images[:, :, :5] = 255  # bright on the left only
    split = Split(images, torch.zeros(3, dtype=torch.int64))
    one = predict_logits(Probe(), split, None, 2, torch.device("cpu"))
    both = predict_logits(Probe(), split, None, 2, torch.device("cpu"), view="hflip")
    assert one[0, 0] > 0 and one[0, 1] == 0
    torch.testing.assert_close(both[:, 0], both[:, 1])  # symmetric after averaging
    torch.testing.assert_close(both[:, 0], one[:, 0] / 2)


def test_both_views_in_one_pass_are_each_views_own_logits_bit_for_bit():
    import torch

    from fmnist.data import Split, Stats
    from fmnist.inference import predict_logits, predict_views
    from fmnist.models import build_model
    from fmnist.views import VIEWS

    torch.manual_seed(0)
    model = build_model("alexnet", {"channels": [8, 16, 16, 16, 8], "fc": 32,
                                    "dropout": 0.5, "lrn": True, "lrn_size": 5})
    g = torch.Generator().manual_seed(2)
    split = Split(torch.randint(0, 256, (70, 28, 28), dtype=torch.uint8, generator=g),
                  torch.zeros(70, dtype=torch.int64))
    stats, cpu = Stats(0.29, 0.35), torch.device("cpu")
    both = predict_views(model, split, stats, 32, cpu)
    assert set(both) == set(VIEWS)
    for view in VIEWS:
        assert torch.equal(both[view], predict_logits(model, split, stats, 32, cpu, view=view))


def test_missing_checkpoint_names_the_stage(evaluated):
    import shutil
    shutil.move(evaluated / "models/alexnet", evaluated / "alexnet.bak")
    try:
        proc = run_stage(evaluated, "evaluate")
    finally:
        shutil.move(evaluated / "alexnet.bak", evaluated / "models/alexnet")
    assert proc.returncode == 2
    assert "run `dvc repro train-alexnet` first" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_report_describes_the_write_ups_recipe():
    """The hyperparameters table of a run with the write-up's own recipe (Adam with L2 in
    the gradient, no schedule, no normalization, no augmentation) says so in words."""
    meta = {"title": "M", "params": {"optimizer": "adam", "lr": 1e-3, "schedule": "constant",
                                     "weight_decay": 0.01, "batch_size": 128, "epochs": 10,
                                     "label_smoothing": 0.0, "normalize": False,
                                     "augment": {"crop_padding": 0, "hflip": False},
                                     "seed": 1, "momentum": 0.9}}
    per_class = {c: {"precision": 1.0, "recall": 1.0, "f1": 1.0} for c in CLASSES}
    metrics = {"trainable_params": 10, "epochs": 10,
               "train": {"loss": 0.5, "accuracy": 0.8},
               "test": {"loss": 0.6, "accuracy": 0.75, "macro_f1": 0.7, "top2_accuracy": 0.9,
                        "per_class": per_class}}
    text = render([{"name": "m", "meta": meta, "metrics": metrics}])
    assert "| Weight decay | 0.01 (L2 in the gradient) |" in text
    assert "| Augmentation | none |" in text and "| Input normalization | none (x / 255) |" in text
    assert "| Learning rate | 0.001 |" in text
    assert "| Test Accuracy | 0.7500 |" in text and "| Test top-2 accuracy | 0.9000 |" in text


def test_hyperparameters_name_each_augmentation():
    p = {"optimizer": "adamw", "lr": 1e-2, "schedule": "onecycle", "weight_decay": 1e-4,
         "batch_size": 512, "epochs": 40, "label_smoothing": 0.1, "normalize": True,
         "seed": 1, "momentum": 0.9,
         "augment": {"crop_padding": 1, "hflip": True, "erase": 0.25}}
    rows = dict(hyperparameters(p))
    assert rows["Augmentation"] == ("random crop (pad 1), horizontal flip, "
                                    "random erasing (p 0.25)")
    p["augment"] = {"crop_padding": 0, "hflip": False, "erase": 0.0}
    assert dict(hyperparameters(p))["Augmentation"] == "none"
    assert dict(hyperparameters(p))["Weight averaging"] == "none"
    p["ema"] = 0.999
    assert dict(hyperparameters(p))["Weight averaging"] == "EMA, decay 0.999 per step"
