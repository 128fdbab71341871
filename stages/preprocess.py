"""DVC stage `preprocess`: parse the IDX files in RAW, hold out validation, write OUT."""

from pathlib import Path

from fmnist.common import CommandParser, run_command
from fmnist.params import PARAMS_FILE, PreprocessParams, load_section
from fmnist.preprocess import preprocess


def main() -> None:
    parser = CommandParser(description=__doc__)
    parser.add_argument("raw", type=Path, help="the raw IDX files (data/raw)")
    parser.add_argument("out", type=Path, help="the prepared store (data/prepared)")
    parser.add_argument("--params", default=PARAMS_FILE)
    args = parser.parse_args()
    params = load_section("preprocess", PreprocessParams, args.params)
    stats = preprocess(params, args.raw, args.out, args.params)
    counts = stats["counts"]
    print(f"prepared {counts['train']} train, {counts['val']} val, {counts['test']} test "
          f"images (train mean {stats['mean']:.4f}, std {stats['std']:.4f})")


if __name__ == "__main__":
    run_command(main)
