"""The `package` stage: a release folder per model whose card states the metrics files'
numbers, and an ONNX export in standard operators, the same bytes run to run, that
agrees with PyTorch."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import yaml

from fmnist import CLASSES
from fmnist.common import UserError
from fmnist.data import Split
from fmnist.export import LRNOps, check_onnx, export_form, export_onnx
from fmnist.models import LocalResponseNorm, build_model
from fmnist.package import FILES
from fmnist.predict import OnnxModel
from tests.support import file_sha256
from tools import ROOT

# ---------------------------------------------------------------- the release folders


def numbers(text: str) -> list[str]:
    """Every decimal written with four places (how the card writes metrics)."""
    return re.findall(r"(?<![\d.])\d+\.\d{4}(?!\d)", text)


def leaves(tree, prefix=""):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from leaves(v, f"{prefix}.{k}" if prefix else k)
    else:
        yield prefix, tree


@pytest.mark.parametrize("name", ["lenet", "alexnet"])
def test_release_folder_holds_weights_meta_onnx_and_a_card_of_the_metrics(packaged_template,
                                                                          name):
    wd = packaged_template
    out = wd / "dist" / name
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)
    assert file_sha256(out / "model.pt") == file_sha256(wd / "models" / name / "model.pt")
    meta = json.loads((out / "meta.json").read_text())
    trained = json.loads((wd / "models" / name / "meta.json").read_text())
    params_tta = re.search(r"\n  tta: (\w+)", (wd / "params.yaml").read_text()).group(1)
    headline = json.loads((wd / f"metrics/{name}.json").read_text())["test_views"]["headline"]
    assert meta == {**trained, "tta": headline} and headline == params_tta

    card = (out / "README.md").read_text()
    metrics = json.loads((wd / f"metrics/{name}.json").read_text())
    # the Hub's metadata header: licence, data set and the test results per view
    header = yaml.safe_load(card.split("---\n")[1])
    assert header["license"] == "mit" and header["library_name"] == "pytorch"
    assert header["datasets"] == ["zalando-datasets/fashion_mnist"]
    results = header["model-index"][0]["results"][0]
    assert results["dataset"]["split"] == "test"
    assert {m["name"]: m["value"] for m in results["metrics"]} == {
        "Test accuracy (image + mirror)": round(metrics["test_views"]["hflip"]["accuracy"], 4),
        "Test accuracy (single view)": round(metrics["test_views"]["single"]["accuracy"], 4)}
    values = {f"{v:.4f}" for _, v in leaves(metrics) if isinstance(v, float)}
    # every 4-place number of the card's results is one of the metrics file's values...
    results = card[card.index("## Test results"):card.index("\n## ", card.index("## Test results"))]
    assert set(numbers(results)) <= values, set(numbers(results)) - values
    assert len(numbers(results)) >= 4 + 3 * len(CLASSES) + 5
    # ...and the ones that must be there are, in their places
    test, views = metrics["test"], metrics["test_views"]
    assert f"Test accuracy **{test['accuracy']:.4f}**" in card
    assert f"| single | {views['single']['accuracy']:.4f} | {views['single']['loss']:.4f} |" \
        in card
    for c in CLASSES:
        pc = test["per_class"][c]
        assert f"| {c} | {pc['precision']:.4f} | {pc['recall']:.4f} | {pc['f1']:.4f} |" in card
    assert f"**Total trainable** | | **{metrics['trainable_params']:,}**" in card
    # the weakest class, and its most frequent confusion, from the confusion CSV
    worst = min(CLASSES, key=lambda c: (test["per_class"][c]["f1"], c))
    rows = [line.split(",") for line in
            (wd / f"metrics/confusion/{name}.csv").read_text().splitlines()[1:]]
    wrong = [p for a, p in rows if a == worst and p != worst]
    top = max(sorted(set(wrong)), key=wrong.count) if wrong else None
    line = next(x for x in card.splitlines() if x.startswith(f"- **{worst}** (F1"))
    assert top is None or f"{top} {wrong.count(top)}" in line
    assert "MIT" in card and "make reproduce STAGES=train-" in card
    assert str(wd) not in card and "/tmp" not in card


# ---------------------------------------------------------------- the ONNX export


@pytest.fixture(scope="module")
def alexnet() -> tuple[torch.nn.Module, dict]:
    torch.manual_seed(0)
    arch = {"channels": [8, 16, 16, 16, 8], "fc": 32, "dropout": 0.5, "lrn": True,
            "lrn_size": 5}
    model = build_model("alexnet", arch).eval()
    meta = {"model": "alexnet", "title": "Scaled-down AlexNet", "arch": arch,
            "normalize": {"mean": 0.29, "std": 0.35}}
    return model, meta


def random_split(n: int = 300) -> Split:
    g = torch.Generator().manual_seed(1)
    return Split(torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=g),
                 torch.zeros(n, dtype=torch.int64))


def test_export_form_computes_what_the_model_does(alexnet):
    model, _ = alexnet
    form = export_form(model)
    assert not any(isinstance(m, LocalResponseNorm) for m in form.modules())
    assert sum(isinstance(m, LRNOps) for m in form.modules()) == 2
    x = torch.randn(16, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(form(x), model(x), atol=1e-5, rtol=1e-5)
    # an even window, which ONNX's own LRN would centre differently
    lrn = LocalResponseNorm(4)
    with torch.no_grad():
        ops = LRNOps(lrn, 8)
        y = torch.rand(3, 8, 5, 5)
        assert torch.allclose(ops(y), torch.nn.LocalResponseNorm(4)(y), atol=1e-6)


def test_onnx_export_is_standard_deterministic_and_agrees_with_pytorch(alexnet, tmp_path):
    model, meta = alexnet
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    export_onnx(model, meta, "hflip", a, opset=18)
    export_onnx(model, meta, "hflip", b, opset=18)
    assert a.read_bytes() == b.read_bytes()
    proto = onnx.load(str(a))
    ops = {(n.domain, n.op_type) for n in proto.graph.node}
    assert {d for d, _ in ops} <= {"", "ai.onnx"}, ops  # the standard domain only
    assert {"Conv", "Pow", "MaxPool", "Relu", "Gemm"} <= {op for _, op in ops}
    assert not {"Dropout", "PythonOp", "ATen"} & {op for _, op in ops}
    assert b"/tmp" not in a.read_bytes() and str(Path.cwd()).encode() not in a.read_bytes()
    assert "+" not in proto.producer_version
    stored = json.loads({p.key: p.value for p in proto.metadata_props}["fmnist"])
    assert stored["model"] == "alexnet" and stored["tta"] == "hflip"
    assert stored["classes"] == list(CLASSES)

    split = random_split()
    agreement = check_onnx(a, model, meta, split, batch_size=128, tolerance=1e-4)
    assert agreement.same_class == agreement.images == len(split)
    assert agreement.max_abs_logit_diff < 1e-4
    # any batch size: the batch dimension is dynamic
    logits = OnnxModel(a, 7).logits(split.images[:20].numpy(), "single")
    assert logits.shape == (20, 10) and np.isfinite(logits).all()


def test_an_export_that_disagrees_with_pytorch_is_refused(alexnet, tmp_path, monkeypatch):
    model, meta = alexnet
    # an export whose LRN is wrong (k + 1): the check on the split catches it
    monkeypatch.setattr(LRNOps, "forward", lambda self, x: x * (
        torch.nn.functional.conv2d(x * x, self.window) + self.k + 1).pow(-self.beta))
    export_onnx(model, meta, "single", tmp_path / "bad.onnx", opset=18)
    with pytest.raises(UserError, match="ONNX Runtime disagrees with PyTorch"):
        check_onnx(tmp_path / "bad.onnx", model, meta, random_split(), 128, 1e-4)


def test_the_card_is_its_template_filled_with_hub_metadata():
    """The card from the template alone (no pipeline): a YAML header a model hub reads,
    every placeholder filled, the model's own layers and the recipe's rows."""
    from collections import Counter

    from fmnist.export import Agreement
    from fmnist.package import card
    from fmnist.params import PackageParams
    views = {"headline": "hflip", "single": {"accuracy": 0.91, "loss": 0.3},
             "hflip": {"accuracy": 0.92, "loss": 0.29}}
    per_class = {c: {"precision": 0.9, "recall": 0.9, "f1": 0.9 - i / 100}
                 for i, c in enumerate(CLASSES)}
    metrics = {"train": {"loss": 0.2, "accuracy": 0.95}, "test_views": views,
               "test": {"accuracy": 0.92, "loss": 0.29, "macro_f1": 0.9, "weighted_f1": 0.9,
                        "top2_accuracy": 0.98, "per_class": per_class}}
    params = yaml.safe_load((ROOT / "params.yaml").read_text())["train_lenet"]
    meta = {"model": "lenet", "title": "LeNet-5", "params": {**params, "amp": "none"},
            "device": "cpu", "world_size": 1,
            "numerics": {"mode": "portable", "tier": "x86-64-avx512-bf16", "threads": 2}}
    text = card(build_model("lenet"), meta, metrics, Counter({("Ankle boot", "Bag"): 3}),
                {"train": 60000, "val": 0, "test": 10000}, Agreement(10000, 10000, 3e-6),
                PackageParams(opset=18, max_logit_diff=1e-4), "dist/lenet")
    header = yaml.safe_load(text.split("---\n")[1])
    results = header["model-index"][0]["results"][0]["metrics"]
    assert [(r["name"], r["value"]) for r in results] == [
        ("Test accuracy (image + mirror)", 0.92), ("Test accuracy (single view)", 0.91)]
    assert "Test accuracy **0.9200**" in text and "| single | 0.9100 | 0.3000 |" in text
    assert "**Total trainable** | | **44,426**" in text
    assert "| Numerics | portable (tier x86-64-avx512-bf16) |" in text
    assert "every logit within 1e-05" in text and "- **Ankle boot** (F1 0.8100): Bag 3" in text
    assert "{{" not in text and "{%" not in text


def test_hostile_strings_from_meta_json_cannot_change_the_card_or_the_report():
    """Round five, case 8: a newline in meta.json's numerics.tier put a command line into
    the card's `sh` block, and a `|` or a backtick from a side file could add a table
    column or close a fence. Every such value goes through one rule for Markdown and
    one for code blocks: the card and the report keep their lines and columns."""
    from collections import Counter

    from fmnist.export import Agreement
    from fmnist.package import card
    from fmnist.params import PackageParams
    from fmnist.report import render

    views = {"headline": "hflip", "single": {"accuracy": 0.91, "loss": 0.3},
             "hflip": {"accuracy": 0.92, "loss": 0.29}}
    per_class = {c: {"precision": 0.9, "recall": 0.9, "f1": 0.9} for c in CLASSES}
    metrics = {"train": {"loss": 0.2, "accuracy": 0.95}, "test_views": views,
               "test": {"accuracy": 0.92, "loss": 0.29, "macro_f1": 0.9, "weighted_f1": 0.9,
                        "top2_accuracy": 0.98, "per_class": per_class},
               "trainable_params": 44_426, "epochs": 40}
    params = yaml.safe_load((ROOT / "params.yaml").read_text())["train_lenet"]
    evil = "x86\n```\nrm -rf ~ # `pwned` | <img src=x> [a](b)"
    meta = {"model": "lenet", "title": f"LeNet-5 | {evil}", "params": {
                **params, "amp": "none", "optimizer": "adamw | extra"},
            "device": f"cpu{evil}", "world_size": 1,
            "numerics": {"mode": "portable", "tier": evil, "threads": 2}}
    text = card(build_model("lenet"), meta, metrics, Counter({("Ankle boot", "Bag"): 3}),
                {"train": 60000, "val": 0, "test": 10000}, Agreement(10000, 10000, 3e-6),
                PackageParams(opset=18, max_logit_diff=1e-4), "dist/lenet")
    block = text.split("```sh\n")[1].split("```")[0]
    assert len(block.splitlines()) == 3 and "\nrm -rf" not in block, block
    assert text.count("```") == 2  # the one sh block, opened and closed
    for line in text.replace(block, "").splitlines():  # code is text as it stands
        if line.startswith("| Numerics") or line.startswith("| Device") \
                or line.startswith("| Optimizer"):
            assert line.replace("\\|", "").count("|") == 3, line  # two cells, no more
        assert not re.search(r"(?<!\\)<img|(?<!\\)\]\(b\)", line), line  # escaped only
    assert "rm -rf" in text  # shown, as text
    report = render([{"metrics": metrics, "meta": meta, "name": "lenet"}], None)
    for line in report.splitlines():
        if line.startswith(("| Optimizer", "| Test Accuracy", "| Class")):
            assert line.replace("\\|", "").count("|") == 3, line
        if line.startswith("##"):
            assert "rm -rf" not in line or "\\`pwned\\`" in line, line
    assert "\nrm -rf" not in report and "```" not in report
