"""DVC stage `package`: each model's release folder (weights, meta.json, the ONNX export
checked against PyTorch on the test split, the model card). Each per-model option takes
one path per model, in the order of --models."""

from fmnist.common import CommandParser, run_command
from fmnist.files import check_apart
from fmnist.models import spec
from fmnist.package import ReleasePaths, package
from fmnist.params import PARAMS_FILE, EvaluateParams, PackageParams, load_section

PER_MODEL = {"checkpoints": "model folders (input)", "metrics": "metrics JSON (input)",
             "confusion": "confusion CSV files (input)", "out": "release folders (output)"}


def main() -> None:
    parser = CommandParser(description=__doc__)
    parser.add_per_model(PER_MODEL, PARAMS_FILE)
    args = parser.parse_args()
    models = [ReleasePaths(spec(name).name, *paths)  # an unknown model is one line
              for name, *paths in parser.per_model(args)]
    check_apart([args.prepared, args.params, *args.checkpoints, *args.metrics,
                 *args.confusion], args.out, "package")
    params = load_section("package", PackageParams, args.params)
    evaluation = load_section("evaluate", EvaluateParams, args.params)
    for m, a in zip(models, package(models, args.prepared, params, evaluation), strict=True):
        print(f"{m.out}: ONNX agrees with PyTorch on {a.same_class}/{a.images} test images, "
              f"largest logit difference {a.max_abs_logit_diff:.2e}")


if __name__ == "__main__":
    run_command(main)
