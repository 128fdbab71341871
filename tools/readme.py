"""The generated blocks of the docs: README.md's results table, docs/models.md's
architecture tables.

    python -m tools.readme           # rewrite the blocks
    python -m tools.readme --check   # exit 1 when a block is out of date (a test does this)

A block sits between ``<!-- generated: NAME -->`` and ``<!-- end: NAME -->``. The
architecture tables come from the models' code and params.yaml's ``arch``, the results
table from the committed metrics and timings files that dvc.yaml declares: nothing is
copied by hand.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fmnist import models
from fmnist.models import INPUT_SHAPE, MODELS, build_model, count_parameters
from fmnist.params import PARAMS_FILE
from tools import ROOT
from tools.repo import option, stage_argv

README, MODELS_DOC = Path("README.md"), Path("docs/models.md")


def describe(mod: nn.Module) -> str:
    """A short label for a layer, as the write-up's tables name them."""
    if isinstance(mod, nn.Conv2d):
        k, p = mod.kernel_size[0], mod.padding[0]
        return f"Conv {k}x{k}, {mod.in_channels}->{mod.out_channels}" + (f", pad {p}" if p else "")
    if isinstance(mod, nn.MaxPool2d):
        return f"MaxPool {mod.kernel_size}"
    if isinstance(mod, nn.Linear):
        return f"Dense {mod.in_features}->{mod.out_features}"
    if isinstance(mod, nn.Dropout | models.Dropout):
        return f"Dropout {mod.p:g}"
    if isinstance(mod, models.LocalResponseNorm):
        return f"LRN size {mod.size}"
    if isinstance(mod, models.ReLUMaxPool):
        return f"ReLU + MaxPool {mod.kernel_size}"
    return type(mod).__name__


def summary(model: nn.Module) -> list[tuple[str, tuple[int, ...], int]]:
    """(layer, output shape, trainable parameters) for each leaf module, in call order."""
    rows: list[tuple[str, tuple[int, ...], int]] = []
    hooks = []
    for module in model.modules():
        if len(list(module.children())) == 0:
            def hook(mod, _inp, out):
                rows.append((describe(mod), tuple(out.shape[1:]), count_parameters(mod)))
            hooks.append(module.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, *INPUT_SHAPE))
    model.train(was_training)
    for h in hooks:
        h.remove()
    return rows


def architecture_table(name: str, root: Path = ROOT) -> str:
    """Model ``name`` as params.yaml's ``arch`` builds it, layer by layer."""
    s = MODELS[name]
    arch = s.load_params(root / PARAMS_FILE).arch
    model = build_model(name, arch)
    lines = [f"**{s.title}** (input {'x'.join(map(str, INPUT_SHAPE))})", "",
             "| # | Layer | Output shape | Parameters |", "|---:|---|---|---:|"]
    for i, (label, shape, n) in enumerate(summary(model), 1):
        lines.append(f"| {i} | `{label}` | {'x'.join(map(str, shape))} | {n:,} |")
    lines.append(f"| | **Total trainable** | | **{count_parameters(model):,}** |")
    return "\n".join(lines)


def _read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


def results_table(root: Path = ROOT) -> str:
    """One row per model from the committed metrics and timings (where dvc.yaml's
    commands write them)."""
    evaluate = stage_argv("evaluate", root)
    models, metrics = option(evaluate, "--models"), option(evaluate, "--metrics")
    lines = ["| Model | Parameters | Epochs | Val accuracy (last epoch) | Test accuracy "
             "| Single view / image + mirror | Test loss | Training time | Training images/s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name in MODELS:
        if name not in models:
            continue
        m = _read(root / metrics[models.index(name)])
        if not m:
            continue
        timings = option(stage_argv(MODELS[name].stage, root), "--timings")
        t = _read(root / timings[0]) if timings else {}
        val = (m.get("val") or {}).get("accuracy")
        meta_val = f"{val:.4f}" if val is not None else "n/a"
        secs, rate = t.get("train_seconds"), t.get("images_per_second")
        secs = f"{secs:,.0f} s" if secs is not None else "n/a"
        rate = f"{rate:,}" if rate is not None else "n/a"
        views = m.get("test_views")
        views = (f"{views['single']['accuracy']:.4f} / {views['hflip']['accuracy']:.4f}"
                 if views else "n/a")
        lines.append(
            f"| {MODELS[name].title} | {m['trainable_params']:,} | {m['epochs']} | "
            f"{meta_val} | **{m['test']['accuracy']:.4f}** | {views} | "
            f"{m['test']['loss']:.3f} | {secs} | {rate} |")
    return "\n".join(lines)


def blocks(root: Path = ROOT) -> dict[Path, dict[str, str]]:
    """file -> block name -> its generated text."""
    return {README: {"results": results_table(root)},
            MODELS_DOC: {"architectures": "\n\n".join(architecture_table(m, root)
                                                      for m in MODELS)}}


def render(text: str, generated: dict[str, str], where: Path = README) -> str:
    for name, body in generated.items():
        pattern = re.compile(rf"(<!-- generated: {name} -->\n)(?:.*?\n)?(<!-- end: {name} -->)",
                             re.S)
        if not pattern.search(text):
            raise SystemExit(f"{where} has no block '{name}'")
        text = pattern.sub(lambda m, b=body: m.group(1) + b + "\n" + m.group(2), text)
    return text


def stale(root: Path = ROOT) -> list[Path]:
    """The files whose generated blocks are out of date."""
    return [f for f, gen in blocks(root).items()
            if render((root / f).read_text(), gen, f) != (root / f).read_text()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    out_of_date = stale()
    if args.check:
        if out_of_date:
            print(f"out of date: {', '.join(map(str, out_of_date))}: run "
                  "`python -m tools.readme`", file=sys.stderr)
            sys.exit(1)
        print("README.md and docs/models.md are up to date")
        return
    for f, gen in blocks().items():
        if f in out_of_date:
            (ROOT / f).write_text(render((ROOT / f).read_text(), gen, f))
            print(f"{f} updated")


if __name__ == "__main__":
    main()
