"""DVC stages `train-lenet` and `train-alexnet`: train one model from its params section.

    python stages/train.py lenet      # reads params.yaml's train_lenet and runtime sections

When the section's ``distributed`` asks for more than one process, this script starts
itself again under torchrun (PyTorch's launcher), so dvc.yaml stays the same.
"""

import argparse
import os
import subprocess
import sys

from fmnist.common import StageArgumentParser, UserError, run_stage
from fmnist.params import TRAIN_PARAMS, load_runtime, load_train
from fmnist.runtime import check_launch, setup_runtime, teardown_runtime
from fmnist.train import RunPaths, train


def main() -> None:
    parser = StageArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help=" | ".join(TRAIN_PARAMS))
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--prepared", default="data/prepared")
    args = parser.parse_args()
    params = load_train(args.model, args.params)  # an unknown model is one line too
    runtime = load_runtime(args.params)

    d = params.distributed
    if d.world > 1 and "LOCAL_RANK" not in os.environ:
        check_launch(params.device, d.backend)
        for split in ("train.pt", "val.pt", "stats.json"):  # what every rank reads first
            if not os.path.exists(os.path.join(args.prepared, split)):
                raise UserError(f"{args.prepared}/{split} not found: run "
                                "`dvc repro preprocess` first")
        cmd = [sys.executable, "-m", "torch.distributed.run",
               f"--nproc_per_node={d.nproc}", f"--nnodes={d.nnodes}",
               f"--node_rank={runtime.node_rank}", f"--master_addr={runtime.master_addr}",
               f"--master_port={runtime.master_port}", *sys.argv]
        sys.exit(subprocess.call(cmd))

    rt = setup_runtime(params.device, params.threads, d.backend)
    try:
        train(args.model, params, RunPaths.for_stage(args.model, args.prepared), rt,
              resume=runtime.resume)
    finally:
        teardown_runtime()


if __name__ == "__main__":
    run_stage(main)
