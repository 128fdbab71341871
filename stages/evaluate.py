"""DVC stage `evaluate`: test both models; write metrics, plot data, figures and the report."""


from fmnist.common import StageArgumentParser, UserError, run_stage
from fmnist.evaluate import evaluate
from fmnist.models import REGISTRY
from fmnist.params import EvaluateParams, load_section


def main() -> None:
    parser = StageArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--models", nargs="+", default=list(REGISTRY))
    args = parser.parse_args()
    unknown = [m for m in args.models if m not in REGISTRY]
    if unknown:
        raise UserError(f"unknown model {unknown[0]!r} in --models (known: "
                        f"{', '.join(REGISTRY)}; their stages: "
                        f"{', '.join(f'train-{m}' for m in REGISTRY)})")
    params = load_section("evaluate", EvaluateParams, args.params)
    for r in evaluate(args.models, params):
        t = r["metrics"]["test"]
        print(f"{r['meta']['title']}: test accuracy {t['accuracy']:.4f}, loss {t['loss']:.4f}, "
              f"macro F1 {t['macro_f1']:.4f}")


if __name__ == "__main__":
    run_stage(main)
