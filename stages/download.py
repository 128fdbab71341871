"""DVC stage `download`: fetch and verify the raw Fashion-MNIST files into data/raw/."""


from fmnist.common import StageArgumentParser, run_stage
from fmnist.download import download
from fmnist.params import DownloadParams, load_section


def main() -> None:
    parser = StageArgumentParser(description=__doc__)
    parser.add_argument("--out", default="data/raw")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()
    params = load_section("download", DownloadParams, args.params)
    download(params, args.out)


if __name__ == "__main__":
    run_stage(main)
