"""DVC stage `evaluate`: test the trained models; write metrics, plot data, figures and
the report. Each per-model option takes one path per model, in the order of --models."""

from pathlib import Path

from fmnist.common import CommandParser, run_command
from fmnist.evaluate import ModelPaths, evaluate
from fmnist.files import check_apart
from fmnist.models import spec
from fmnist.params import PARAMS_FILE, EvaluateParams, load_section

PER_MODEL = {"checkpoints": "model folders (input)", "curves": "training curves (input)",
             "metrics": "metrics JSON files", "confusion": "confusion CSV files"}


def main() -> None:
    parser = CommandParser(description=__doc__)
    parser.add_per_model(PER_MODEL, PARAMS_FILE)
    parser.add_argument("--figures", type=Path, required=True, help="the PNGs' folder")
    parser.add_argument("--report", type=Path, required=True, help="the markdown report")
    args = parser.parse_args()
    models = [ModelPaths(spec(name).name, *paths)  # an unknown model is one line
              for name, *paths in parser.per_model(args)]
    check_apart([args.prepared, args.params, *args.checkpoints, *args.curves],
                [*args.metrics, *args.confusion, args.figures, args.report], "evaluate")
    params = load_section("evaluate", EvaluateParams, args.params)
    for r in evaluate(models, params, args.prepared, args.figures, args.report):
        t = r["metrics"]["test"]
        print(f"{r['meta']['title']}: test accuracy {t['accuracy']:.4f}, loss {t['loss']:.4f}, "
              f"macro F1 {t['macro_f1']:.4f}")


if __name__ == "__main__":
    run_command(main)
