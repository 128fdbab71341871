"""The generated blocks of the docs: README.md's results table, docs/models.md's
architecture tables, docs/experiments.md's runs of each seed.

    python -m tools.readme           # rewrite the blocks
    python -m tools.readme --check   # exit 1 when a block is out of date (a test does this)

A block sits between ``<!-- generated: NAME -->`` and ``<!-- end: NAME -->``. The
architecture tables come from the models' code and params.yaml's ``arch``, the results
table from the committed metrics and timings files that dvc.yaml declares and
metrics/seeds.json (``python -m tools.seeds``): nothing is copied by hand.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from fmnist.common import option
from fmnist.markdown import table
from fmnist.models import MODELS, build_model
from fmnist.params import PARAMS_FILE
from fmnist.summary import layer_table
from fmnist.views import LABELS, VIEWS
from tools import ROOT, run_tool
from tools.repo import metrics_paths, stage_argv

README, MODELS_DOC, EXPERIMENTS_DOC = (Path("README.md"), Path("docs/models.md"),
                                      Path("docs/experiments.md"))
SEEDS_FILE = Path("metrics/seeds.json")  # written by tools.seeds


def architecture_table(name: str, root: Path = ROOT) -> str:
    """Model ``name`` as params.yaml's ``arch`` builds it, layer by layer."""
    s = MODELS[name]
    arch = s.load_params(root / PARAMS_FILE).arch
    return layer_table(build_model(name, arch), s.title)


def _read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


def results_table(root: Path = ROOT) -> str:
    """One row per model from the committed metrics and timings (where dvc.yaml's
    commands write them)."""
    metrics = metrics_paths(root)
    seeds = _read(root / SEEDS_FILE)
    rows = []
    for name in MODELS:
        if name not in metrics:
            continue
        m = _read(root / metrics[name])
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
        views = (" / ".join(f"{views[v]['accuracy']:.4f}" for v in VIEWS)
                 if views else "n/a")
        s = seeds.get(name)
        spread = (" / ".join(f"{s[v]['mean']:.4f} ± {s[v]['std']:.4f}" for v in VIEWS)
                  + f" ({len(s['runs'])} seeds)" if s and len(s["runs"]) > 1 else "n/a")
        rows.append([MODELS[name].title, f"{m['trainable_params']:,}", str(m["epochs"]),
                     meta_val, f"**{m['test']['accuracy']:.4f}**", views, spread,
                     f"{m['test']['loss']:.3f}", secs, rate])
    both = " / ".join(LABELS[v] for v in VIEWS)
    return table(["Model", "Parameters", "Epochs", "Val accuracy (last epoch)",
                  "Test accuracy", both.capitalize(), f"Seeds: mean ± std ({both})",
                  "Test loss", "Training time", "Training images/s"], rows)


def seeds_table(root: Path = ROOT) -> str:
    """Each seed's run of each model, from metrics/seeds.json."""
    seeds = _read(root / SEEDS_FILE)
    rows = [[MODELS[name].title, str(r["seed"]), r["run"],
             *(f"{r[v]:.4f}" for v in VIEWS)]
            for name, s in seeds.items() for r in s["runs"]]
    if not rows:
        return "No seeds summarised yet: `python -m tools.seeds`."
    return table(["Model", "Seed", "Run", *(f"Test accuracy, {LABELS[v]}" for v in VIEWS)],
                 rows)


def blocks(root: Path = ROOT) -> dict[Path, dict[str, str]]:
    """file -> block name -> its generated text."""
    return {README: {"results": results_table(root)},
            MODELS_DOC: {"architectures": "\n\n".join(architecture_table(m, root)
                                                      for m in MODELS)},
            EXPERIMENTS_DOC: {"seeds": seeds_table(root)}}


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
        print(f"{', '.join(map(str, blocks()))} are up to date")
        return
    for f, gen in blocks().items():
        if f in out_of_date:
            (ROOT / f).write_text(render((ROOT / f).read_text(), gen, f))
            print(f"{f} updated")


if __name__ == "__main__":
    run_tool(main)
