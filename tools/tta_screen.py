"""Validation accuracy of trained models, single view against image + mirror (TTA).

    python -m tools.tta_screen models/alexnet other/model_dir ...

How `evaluate.tta` was chosen: on the validation split, never the test split.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from fmnist.checkpoint import load_checkpoint, loss_and_accuracy, predict_logits
from fmnist.data import Stats, load_split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dirs", nargs="+", type=Path)
    parser.add_argument("--prepared", type=Path, default=Path("data/prepared"))
    args = parser.parse_args()
    val = load_split(args.prepared, "val")
    torch.set_num_threads(2)
    print("| Model | Val accuracy, single view | Val accuracy, image + mirror |")
    print("|---|---:|---:|")
    for d in args.model_dirs:
        model, meta = load_checkpoint(d, "its training stage")
        norm = meta.get("normalize")
        stats = Stats(norm["mean"], norm["std"]) if norm else None
        accs = [loss_and_accuracy(predict_logits(model, val, stats, 1000, torch.device("cpu"),
                                                 hflip=hflip), val.labels)[1]
                for hflip in (False, True)]
        print(f"| {d} | {accs[0]:.4f} | {accs[1]:.4f} |")


if __name__ == "__main__":
    main()
