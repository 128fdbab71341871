"""DVC stage `download`: fetch and verify the raw Fashion-MNIST files into OUT."""

from pathlib import Path

from fmnist.common import CommandParser, run_command
from fmnist.download import download
from fmnist.params import PARAMS_FILE, DownloadParams, load_section


def main() -> None:
    parser = CommandParser(description=__doc__)
    parser.add_argument("out", type=Path, help="the folder of raw files (data/raw)")
    parser.add_argument("--params", default=PARAMS_FILE)
    args = parser.parse_args()
    download(load_section("download", DownloadParams, args.params), args.out)


if __name__ == "__main__":
    run_command(main)
