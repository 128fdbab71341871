"""`fmnist`: the project's command for users, run from the project's root.

    fmnist reproduce [--stages train-lenet train-alexnet]   # re-train, compare bit for bit
    fmnist presets writeup                                  # a preset as dvc -S arguments
    fmnist check-params                                     # validate params.yaml, run nothing
    fmnist predict models/alexnet shoe.jpg photos/          # classify image files
    fmnist predict dist/alexnet/model.onnx test.npy --json  # on ONNX Runtime, no torch

Each subcommand has --help. Errors a user can cause are one line and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fmnist.common import CommandParser, ParamsError, run_command
from fmnist.views import VIEWS


def _reproduce(args: argparse.Namespace) -> int:
    from fmnist.models import MODELS
    from fmnist.reproduce import reproduce

    stages = args.stages or [next(iter(MODELS.values())).stage]
    return reproduce(args.repo.resolve(), stages, args.keep, args.json)


def _presets(args: argparse.Namespace) -> int:
    from fmnist.presets import load_preset, set_args, shell_words

    print(shell_words(set_args(load_preset(args.preset))))
    return 0


def _downloaded_train_labels(root: Path):
    """The training labels `download` wrote, where they are: in the folder that the
    preprocess cmd of ``root``/dvc.yaml reads (None where either is missing)."""
    import yaml

    from fmnist.common import positionals, stage_command
    from fmnist.idx import raw_paths, read_idx

    try:
        pipeline = yaml.safe_load((root / "dvc.yaml").read_text())
        raw = positionals(stage_command(pipeline, "preprocess"))[0]  # preprocess.py RAW OUT
    except (OSError, AttributeError, IndexError, ValueError, yaml.YAMLError):
        return None
    labels = raw_paths(root / raw, "train")[1]
    return read_idx(labels) if labels.is_file() else None


def _check_params(args: argparse.Namespace) -> int:
    """Every section as its stage reads it, and what a stage would refuse later, after
    DVC had removed its outputs: a device this machine lacks, a model too big for its
    memory, a split the downloaded data cannot give (where it is present; else
    Fashion-MNIST's 60,000 training images), fewer training images than a batch, an
    unknown section."""
    from fmnist.models import MODELS, fits_in_memory
    from fmnist.params import (
        RUNTIME_SECTION,
        STAGE_SECTIONS,
        TRAIN_IMAGES,
        load_runtime,
        load_section,
        read_params,
    )
    from fmnist.runtime import check_device, resolve_device

    known = {*STAGE_SECTIONS, *(s.section for s in MODELS.values()), RUNTIME_SECTION}
    unknown = sorted(set(read_params(args.params)) - known)
    if unknown:
        raise ParamsError(f"{args.params}: unknown section {unknown[0]!r} (known: "
                          f"{', '.join(sorted(known))})")
    loaded = {section: load_section(section, schema, args.params)
              for section, schema in STAGE_SECTIONS.items()}
    resolve_device(loaded["evaluate"].device)
    val_size = loaded["preprocess"].val_size
    labels = _downloaded_train_labels(Path(args.params).parent)
    if labels is not None:
        from fmnist.preprocess import check_split

        check_split(labels, val_size, args.params)
    train_images = (TRAIN_IMAGES if labels is None else len(labels)) - val_size
    for s in MODELS.values():
        p = s.load_params(args.params)
        where = f"{args.params}: {s.section}"
        check_device(p, resolve_device(p.device), where)
        if p.batch_size > train_images:
            raise ParamsError(f"{where}.batch_size: {p.batch_size} is more than the "
                              f"{train_images:,} training images preprocess.val_size leaves")
        fits_in_memory(s, p, where)
    load_runtime(args.params)
    print(f"{args.params}: every section is valid")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from fmnist.predict import run

    fmt = "json" if args.json else "csv" if args.csv else "table"
    return run(args.model, args.images, args.tta, not args.no_convert, args.top, fmt,
               args.batch_size, args.params)


def parser() -> argparse.ArgumentParser:
    top = CommandParser(prog="fmnist", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND",
                             parser_class=CommandParser)
    p = sub.add_parser("reproduce", help="re-run the committed training in a temporary "
                       "clone: the same bits, or the same result (a statistical verdict)",
                       description="Clone HEAD, run the stages from nothing with `dvc repro`, "
                       "compare their outputs' hashes with the committed dvc.lock; where a "
                       "model's bits differ, test it against the committed predictions. "
                       "Verdict per stage: identical, equivalent (the 90% interval of the "
                       "paired accuracy difference within ±0.005), inconclusive, different; "
                       "not run for a stage this run did not re-run. Exit code 0 when every "
                       "stage that ran is identical or equivalent, 1 otherwise, 2 on an "
                       "error. Ctrl-C or SIGTERM stops the re-run and removes the "
                       "temporary folder.")
    p.add_argument("--stages", nargs="+",
                   help="the stages to re-run (download and preprocess run before them); "
                   "default: the first model's")
    p.add_argument("--repo", type=Path, default=Path("."), help="the project (default: .)")
    p.add_argument("--keep", type=Path, help="work in this folder (new or empty) and "
                   "keep it")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout: per "
                   "stage bitwise and verdict; for a model whose bits differ test_accuracy "
                   "{committed, here}, difference, interval {confidence, low, high}, "
                   "margin, agreement and p_value")
    p.set_defaults(run=_reproduce)
    p = sub.add_parser("presets", help="print a preset (presets/NAME.yaml) as "
                       "`dvc exp run` --set-param arguments",
                       description='eval "dvc exp run -n writeup $(fmnist presets writeup)"')
    p.add_argument("preset", help="a name in presets/ or a path to a YAML file")
    p.set_defaults(run=_presets)
    p = sub.add_parser("check-params", help="validate every section of params.yaml, "
                       "running nothing",
                       description="Validate every section as the stages will: a bad value "
                       "is one line naming the key. `make run` runs this before `dvc repro`, "
                       "so that DVC never removes a stage's outputs for a run that would "
                       "refuse its params.")
    p.add_argument("--params", type=Path, default=Path("params.yaml"))
    p.set_defaults(run=_check_params)
    p = sub.add_parser(
        "predict", help="classify image files with a model folder or an ONNX file",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Classify images: PNG, JPEG or any format Pillow reads, folders of "
        "them, .npy arrays ((H, W) or (N, H, W); uint8, or floats in [0, 1]) and IDX "
        "files.\nImages not already like the data set's (28x28 grayscale, a light "
        "garment on black) are converted its way:\ngrayscale, invert a light "
        "background, trim, longer side to 28, centre.\nExit code 1 when an input "
        "failed (one line each on stderr; the others are still reported), 2 when the "
        "model cannot be used.")
    p.add_argument("model", type=Path, help="a model folder (models/NAME, dist/NAME, what "
                   "`dvc artifacts get` wrote) or an exported .onnx file")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files, folders, "
                   ".npy or IDX files")
    p.add_argument("--tta", choices=VIEWS, help="test-time view: one image, "
                   "or the mean of it and its mirror image (default: the model's recorded "
                   "view, else params.yaml's evaluate.tta, else single)")
    p.add_argument("--no-convert", action="store_true",
                   help="take 28x28 images as they are; no trimming, resizing or inverting")
    p.add_argument("--top", type=int, default=2, metavar="K",
                   help="report the K most probable classes (default: 2)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="one JSON object on stdout")
    out.add_argument("--csv", action="store_true", help="CSV on stdout")
    p.add_argument("--batch-size", type=int, default=1000, help="images per forward pass")
    p.add_argument("--params", type=Path, help="where to look up evaluate.tta "
                   "(default: ./params.yaml, where there is one); refused when it does "
                   "not parse")
    p.set_defaults(run=_predict)
    return top


def main(argv: list[str] | None = None) -> None:
    def command() -> None:
        args = parser().parse_args(argv)
        sys.exit(args.run(args))

    run_command(command)


if __name__ == "__main__":
    main()
