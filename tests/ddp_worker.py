"""Run by torchrun in test_distributed.py: train, recording what this rank saw.

Wraps the loop's batching to record each epoch's sample order, then saves that and the
rank's final weights, so the test can check sharding and that DDP kept ranks in step.
"""

import sys
from pathlib import Path

import torch

import fmnist.train as train_mod
from fmnist.params import TrainParams, load_section

seen: list[list[int]] = []
_batches = train_mod.train_batches


def recording_batches(split, batch_size, order, *args, **kwargs):
    seen.append(order.tolist())
    return _batches(split, batch_size, order, *args, **kwargs)


captured = {}
_make_trainer = train_mod.make_trainer


def capturing_make_trainer(*args, **kwargs):
    captured["trainer"] = _make_trainer(*args, **kwargs)
    return captured["trainer"]


train_mod.train_batches = recording_batches
train_mod.make_trainer = capturing_make_trainer

wd, out = Path(sys.argv[1]), Path(sys.argv[2])
params = load_section("train_lenet", TrainParams, wd / "params.yaml")
rt = train_mod.setup_runtime(params.device, params.threads, params.distributed.backend)
meta = train_mod.train("lenet", params, wd / "data/prepared", out / "model", out / "state.pt",
                       out / "curves.tsv", rt=rt)
weights = train_mod._unwrap(captured["trainer"].model).state_dict()
torch.save({"seen": seen, "world": rt.world, "meta": meta, "weights": weights},
           out / f"rank{rt.rank}.pt")
train_mod.teardown_runtime()
