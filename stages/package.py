"""DVC stage `package`: each model's release folder (weights, meta.json, the ONNX export
checked against PyTorch on the test split, the model card). Each per-model option takes
one path per model, in the order of --models."""

from pathlib import Path

from fmnist.common import StageArgumentParser, UserError, run_stage
from fmnist.files import check_apart
from fmnist.models import spec
from fmnist.package import ReleasePaths, package
from fmnist.params import PARAMS_FILE, EvaluateParams, PackageParams, load_section

PER_MODEL = {"checkpoints": "model folders (input)", "metrics": "metrics JSON (input)",
             "confusion": "confusion CSV files (input)", "out": "release folders (output)"}


def main() -> None:
    parser = StageArgumentParser(description=__doc__)
    parser.add_argument("--params", default=PARAMS_FILE)
    parser.add_argument("--prepared", type=Path, required=True)
    parser.add_argument("--models", nargs="+", required=True, help="model names")
    for key, what in PER_MODEL.items():
        parser.add_argument(f"--{key}", nargs="+", type=Path, required=True, help=what)
    args = parser.parse_args()
    names = [spec(m).name for m in args.models]  # an unknown model is one line
    if any(len(getattr(args, key)) != len(names) for key in PER_MODEL):
        raise UserError(f"--{' --'.join(PER_MODEL)} need one path per model in --models")
    check_apart([args.prepared, args.params, *args.checkpoints, *args.metrics,
                 *args.confusion], args.out, "package")
    params = load_section("package", PackageParams, args.params)
    evaluation = load_section("evaluate", EvaluateParams, args.params)
    models = [ReleasePaths(*row) for row in zip(names, *(getattr(args, k) for k in PER_MODEL),
                                                strict=True)]
    for m, a in zip(models, package(models, args.prepared, params, evaluation), strict=True):
        print(f"{m.out}: ONNX agrees with PyTorch on {a.same_class}/{a.images} test images, "
              f"largest logit difference {a.max_abs_logit_diff:.2e}")


if __name__ == "__main__":
    run_stage(main)
