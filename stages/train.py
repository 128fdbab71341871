"""DVC stages `train-NAME`: train one model from params.yaml's `train_NAME` section.

When the section's `distributed` asks for more than one process, the stage starts
itself again under torchrun (PyTorch's launcher), so dvc.yaml stays the same.
"""

import sys
from pathlib import Path

from fmnist.common import CommandParser, run_command
from fmnist.data import check_prepared
from fmnist.files import check_apart
from fmnist.models import MODELS, spec
from fmnist.params import PARAMS_FILE, load_runtime
from fmnist.runtime import relaunch_under_torchrun, running
from fmnist.train import RunPaths, train


def main() -> None:
    parser = CommandParser(description=__doc__)
    parser.add_argument("model", help=" | ".join(MODELS))
    parser.add_argument("--params", default=PARAMS_FILE)
    for flag, what in (("--prepared", "the prepared data (input)"),
                       ("--out", "the model folder: model.pt and meta.json"),
                       ("--curves", "per-epoch curves, TSV"),
                       ("--timings", "wall times and environment, JSON"),
                       ("--state", "the resume state file (per machine)"),
                       ("--live", "DVCLive's folder: the latest epoch's metrics")):
        parser.add_argument(flag, type=Path, required=True, help=what)
    args = parser.parse_args()
    check_apart([args.prepared, args.params],
                [args.out, args.curves, args.timings, args.state, args.live], "train")
    s = spec(args.model)  # an unknown model is one line too
    params, runtime = s.load_params(args.params), load_runtime(args.params)
    where = f"{args.params}: {s.section}"
    code = relaunch_under_torchrun(params, runtime, where,
                                   lambda: check_prepared(args.prepared))
    if code is not None:
        sys.exit(code)
    paths = RunPaths(args.prepared, args.out, args.curves, args.state, args.timings,
                     args.live)
    with running(params, where) as rt:
        train(s.name, params, paths, rt, resume=runtime.resume)


if __name__ == "__main__":
    run_command(main)
