"""DVC stage `preprocess`: parse the IDX files, hold out validation, write data/prepared/."""


from fmnist.common import StageArgumentParser, run_stage
from fmnist.params import PreprocessParams, load_section
from fmnist.preprocess import preprocess


def main() -> None:
    parser = StageArgumentParser(description=__doc__)
    parser.add_argument("--raw", default="data/raw")
    parser.add_argument("--out", default="data/prepared")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()
    params = load_section("preprocess", PreprocessParams, args.params)
    stats = preprocess(params, args.raw, args.out, args.params)
    counts = stats["counts"]
    print(f"prepared {counts['train']} train, {counts['val']} val, {counts['test']} test "
          f"images (train mean {stats['mean']:.4f}, std {stats['std']:.4f})")


if __name__ == "__main__":
    run_stage(main)
