"""DVC stages `train-lenet` and `train-alexnet`: train one model from its params section.

    python stages/train.py lenet      # reads params.yaml's train_lenet section

When the section's ``distributed`` asks for more than one process, this script starts
itself again under torchrun (PyTorch's launcher), so dvc.yaml stays the same.
"""

import argparse
import os
import subprocess
import sys

from fmnist.common import run_stage
from fmnist.models import REGISTRY
from fmnist.params import TrainParams, load_section
from fmnist.train import teardown_runtime, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", choices=sorted(REGISTRY))
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--prepared", default="data/prepared")
    args = parser.parse_args()
    section = f"train_{args.model}"
    params = load_section(section, TrainParams, args.params)

    d = params.distributed
    if (d.nproc > 1 or d.nnodes > 1) and "LOCAL_RANK" not in os.environ:
        cmd = [sys.executable, "-m", "torch.distributed.run",
               f"--nproc_per_node={d.nproc}", f"--nnodes={d.nnodes}",
               f"--node_rank={d.node_rank}", f"--master_addr={d.master_addr}",
               f"--master_port={d.master_port}", *sys.argv]
        sys.exit(subprocess.call(cmd))

    try:
        train(args.model, params, args.prepared, out_dir=f"models/{args.model}",
              state_path=f"state/{args.model}/last.pt",
              curves_path=f"metrics/curves/{args.model}.tsv", section=section)
    finally:
        teardown_runtime()


if __name__ == "__main__":
    run_stage(main)
