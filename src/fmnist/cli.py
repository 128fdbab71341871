"""`fmnist`: the project's command for users, run from the project's root.

    fmnist reproduce [--stages train-lenet train-alexnet]   # re-train, compare bit for bit
    fmnist presets writeup                                  # a preset as dvc -S arguments

Each subcommand has --help. Errors a user can cause are one line and exit code 2.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from fmnist.common import StageArgumentParser, run_stage


def _reproduce(args: argparse.Namespace) -> int:
    from fmnist.models import MODELS
    from fmnist.reproduce import reproduce

    args.stages = args.stages or [next(iter(MODELS.values())).stage]
    if args.keep:
        shutil.rmtree(args.keep, ignore_errors=True)  # a folder of an earlier --keep
        return 0 if reproduce(args.repo.resolve(), args.stages, args.keep.resolve()) else 1
    with tempfile.TemporaryDirectory(prefix="fmnist-reproduce-") as tmp:
        return 0 if reproduce(args.repo.resolve(), args.stages, Path(tmp)) else 1


def _presets(args: argparse.Namespace) -> int:
    from fmnist.presets import load_preset, set_args

    print(" ".join(set_args(load_preset(args.preset))))
    return 0


def parser() -> argparse.ArgumentParser:
    top = StageArgumentParser(prog="fmnist", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND",
                             parser_class=StageArgumentParser)
    p = sub.add_parser("reproduce", help="re-run the committed training in a temporary "
                       "clone and compare every output with dvc.lock, bit for bit",
                       description="Clone HEAD, run the stages from nothing with `dvc repro`, "
                       "compare their outputs' hashes with the committed dvc.lock; explain "
                       "a mismatch. Exit code 1 on any mismatch.")
    p.add_argument("--stages", nargs="+",
                   help="the stages to re-run (download and preprocess run before them); "
                   "default: the first model's")
    p.add_argument("--repo", type=Path, default=Path("."), help="the project (default: .)")
    p.add_argument("--keep", type=Path, help="work in this folder and keep it")
    p.set_defaults(run=_reproduce)
    p = sub.add_parser("presets", help="print a preset (presets/NAME.yaml) as "
                       "`dvc exp run` --set-param arguments",
                       description="dvc exp run -n writeup $(fmnist presets writeup)")
    p.add_argument("preset", help="a name in presets/ or a path to a YAML file")
    p.set_defaults(run=_presets)
    return top


def main(argv: list[str] | None = None) -> None:
    def command() -> None:
        args = parser().parse_args(argv)
        sys.exit(args.run(args))

    run_stage(command)


if __name__ == "__main__":
    main()
