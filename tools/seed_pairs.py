"""Calibrate `fmnist reproduce`'s verdict on runs that differ by their seed alone: every
pair of a model's seeds, compared as `fmnist reproduce` compares a re-trained model with
the committed one (the paired accuracy difference, its 90% interval against ±0.005, and
McNemar's p), as a Markdown table for docs/experiments.md.

    python -m tools.seed_pairs lenet metrics/confusion/lenet.csv runs/lenet-2 ...

Each run is a model folder (models/NAME as a training stage writes it: predicted here on
data/prepared's test split, with evaluate's view and numerics) or a per-image CSV as
`evaluate` writes it (``metrics/confusion/NAME.csv``: a DVC experiment holds one in git,
``git show EXP:metrics/confusion/NAME.csv``). Two seeds of one recipe are the same
science: a verdict other than ``equivalent`` for such a pair is what the test would
say of a re-run as good as the committed one.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

from fmnist.common import UserError, option
from fmnist.markdown import table
from fmnist.models import MODELS
from fmnist.params import PARAMS_FILE
from fmnist.reproduce import (
    CONFIDENCE,
    MARGIN,
    compare_predictions,
    predict_classes,
    read_confusion,
)
from tools import ROOT, run_tool
from tools.repo import stage_argv


def predictions(model: str, run: Path, prepared: Path) -> tuple[list[int], list[int]]:
    """(labels, predicted classes) of one run on the test split."""
    if run.is_dir():
        return predict_classes(run, prepared, ROOT / PARAMS_FILE, model)
    try:
        return read_confusion(run.read_text(), str(run))
    except OSError as exc:
        raise UserError(f"{run}: unreadable ({exc.strerror or exc})") from None


def pair_rows(runs: dict[str, tuple[list[int], list[int]]]) -> list[list[str]]:
    rows = []
    for (a, (labels, first)), (b, (labels_b, second)) in itertools.combinations(
            runs.items(), 2):
        if labels != labels_b:
            raise UserError(f"{a} and {b} are not about the same test images")
        c = compare_predictions(labels, first, second)
        low, high = c.interval
        rows.append([a, b, f"{c.committed:.4f}", f"{c.here:.4f}", f"{c.difference:+.4f}",
                     f"[{low:+.4f}, {high:+.4f}]", f"{c.only_committed + c.only_here}",
                     f"{c.p_value:.3g}", c.verdict])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.seed_pairs",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("model", choices=list(MODELS))
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN",
                        help="a model folder or a per-image CSV; NAME=PATH names it")
    parser.add_argument("--prepared", type=Path, default=None,
                        help="the prepared data (default: where dvc.yaml's stage reads it)")
    args = parser.parse_args()
    prepared = args.prepared or ROOT / option(stage_argv(MODELS[args.model].stage),
                                              "--prepared")[0]
    runs = {}
    for run in args.runs:
        name, _, path = str(run).rpartition("=")
        runs[name or path] = predictions(args.model, Path(path), prepared)
    if len(runs) < 2:
        raise UserError("give at least two runs to compare")
    print(table(["A", "B", "accuracy A", "accuracy B", "B - A",
                 f"{CONFIDENCE:.0%} interval", "discordant", "McNemar p",
                 f"verdict (±{MARGIN})"], pair_rows(runs)))


if __name__ == "__main__":
    run_tool(main)
