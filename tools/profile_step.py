"""Where a training step's time goes, on this machine: `python -m tools.profile_step`.

Two views of the project's own training step (``Trainer.step``, the params.yaml recipe,
random input of one batch):
- by layer kind, by ablation: the step timed as it is, then with the LRN, the dropout
  and both taken out (in the same process, interleaved, best window of each), so the
  difference is what that layer kind costs, and what is left is the convolutions,
  dense layers, pooling and optimizer step alone;
- by operator: torch.profiler's table of the aten ops with the most self CPU time.
Run it on an idle machine: two torch processes on two cores slow each other tenfold.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from fmnist import NUM_CLASSES
from fmnist.models import INPUT_SHAPE, MODELS, spec
from fmnist.params import PARAMS_FILE, TrainParams
from fmnist.runtime import setup_runtime
from fmnist.train import Trainer, make_trainer
from tools import ROOT, run_tool

# Layer kinds taken out, as arch settings; a model gets those its arch has
ABLATIONS = {"as it is": {}, "without LRN": {"lrn": False}, "without dropout": {"dropout": 0.0},
             "without either": {"lrn": False, "dropout": 0.0}}


def ablations_for(params: TrainParams) -> dict[str, dict]:
    fields = type(params.arch).model_fields
    return {k: a for k, a in ABLATIONS.items() if set(a) <= set(fields)}


def trainer_for(name: str, params: TrainParams, amp: str, arch: dict) -> tuple[Trainer, int]:
    p = params.model_copy(update={"amp": amp, "arch": params.arch.model_copy(update=arch),
                                  "device": "cpu"})
    trainer = make_trainer(name, p, setup_runtime(p, name).device, 10**6)
    trainer.model.train()
    return trainer, p.batch_size


def batch(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return (torch.randn(size, *INPUT_SHAPE, generator=g),
            torch.randint(0, NUM_CLASSES, (size,), generator=g))


def step_ms(runs: dict[str, tuple[Trainer, int]], rounds: int, steps: int) -> dict[str, float]:
    """Best milliseconds per step of each trainer, its windows interleaved with the others'."""
    data = {k: batch(b) for k, (_, b) in runs.items()}
    for k, (tr, _) in runs.items():
        for _ in range(3):
            tr.step(*data[k])
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(rounds):
        for k, (tr, _) in runs.items():
            t0 = time.perf_counter()
            for _ in range(steps):
                tr.step(*data[k])
            best[k] = min(best[k], (time.perf_counter() - t0) / steps * 1e3)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="alexnet", choices=list(MODELS))
    parser.add_argument("--amp", default="bf16", choices=["none", "bf16"])
    parser.add_argument("--params", default=str(ROOT / PARAMS_FILE))
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--ops", type=int, default=15, help="rows of the operator table")
    args = parser.parse_args()

    params = spec(args.model).load_params(args.params)
    ablations = ablations_for(params)
    runs = {k: trainer_for(args.model, params, args.amp, a) for k, a in ablations.items()}
    ms = step_ms(runs, args.rounds, args.steps)
    size = runs["as it is"][1]
    full = ms["as it is"]
    print(f"{args.model}, {args.amp}, batch {size}, {torch.get_num_threads()} threads: "
          f"{full:.1f} ms per step ({size / full * 1e3:,.0f} img/s)")
    for k in ablations:
        if k != "as it is":
            cost = full - ms[k]
            print(f"  {k}: {ms[k]:.1f} ms ({size / ms[k] * 1e3:,.0f} img/s); what it takes "
                  f"out costs {cost:.1f} ms ({cost / full:.0%} of the step)")

    trainer, _ = runs["as it is"]
    x, y = batch(size)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            trainer.step(x, y)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.ops))


if __name__ == "__main__":
    run_tool(main)
