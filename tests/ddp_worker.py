"""Run by torchrun in test_distributed.py: train, recording what this rank saw.

    ddp_worker.py WORKDIR OUT [--stop-after N] [--state-per-rank]

Wraps the loop's batching to record each epoch's sample order, then saves that and the
rank's final weights, so the test can check sharding and that DDP kept ranks in step.
``--stop-after N`` ends every rank after N epochs (their resume state saved), as a
killed run would; ``--state-per-rank`` gives each rank its own resume-state path, so
only rank 0's holds the saved state, as on a node that does not share rank 0's disk.
"""

import argparse
import sys
from pathlib import Path

import torch

import fmnist.train as train_mod
from fmnist.models import spec
from fmnist.runtime import setup_runtime, teardown_runtime

parser = argparse.ArgumentParser()
parser.add_argument("wd", type=Path)
parser.add_argument("out", type=Path)
parser.add_argument("--stop-after", type=int, default=0)
parser.add_argument("--state-per-rank", action="store_true")
args = parser.parse_args()

seen: list[list[int]] = []
_batches = train_mod.train_batches


def recording_batches(split, batch_size, order, *a, **kw):
    seen.append(order.tolist())
    return _batches(split, batch_size, order, *a, **kw)


captured = {}
_make_trainer = train_mod.make_trainer


def capturing_make_trainer(*a, **kw):
    captured["trainer"] = _make_trainer(*a, **kw)
    return captured["trainer"]


_run_epoch = train_mod.run_epoch
epochs_run = []


def stopping_run_epoch(*a, **kw):
    if args.stop_after and len(epochs_run) == args.stop_after:
        sys.exit(3)  # every rank, after the barrier of the last epoch it finished
    epochs_run.append(a[-1])
    return _run_epoch(*a, **kw)


train_mod.train_batches = recording_batches
train_mod.make_trainer = capturing_make_trainer
train_mod.run_epoch = stopping_run_epoch

params = spec("lenet").load_params(args.wd / "params.yaml")
rt = setup_runtime(params, "train_lenet")
state = args.out / (f"state{rt.rank}.pt" if args.state_per_rank else "state.pt")
paths = train_mod.RunPaths(args.wd / "data/prepared", args.out / "model",
                           args.out / "curves.tsv", state)
meta = train_mod.train("lenet", params, paths, rt=rt)
weights = train_mod._unwrap(captured["trainer"].model).state_dict()
torch.save({"seen": seen, "world": rt.world, "meta": meta, "weights": weights,
            "epochs_run": epochs_run}, args.out / f"rank{rt.rank}.pt")
teardown_runtime()
