"""Bad params end in one line naming the key, exit code 2, and nothing written.

The schema cases are validated in-process, as each stage loads its section; a few run
the stage itself, for the contract of the command (exit code 2, one line on stderr,
nothing written)."""

import pytest
import yaml

from fmnist.common import UserError
from fmnist.models import MODELS, spec
from fmnist.params import (
    DownloadParams,
    EvaluateParams,
    PackageParams,
    PreprocessParams,
    load_runtime,
    load_section,
)
from tests.support import assert_one_line_error as one_line
from tests.support import run_script, run_stage, set_params
from tools import ROOT

LOADERS = {
    "download": lambda p: load_section("download", DownloadParams, p),
    "preprocess": lambda p: load_section("preprocess", PreprocessParams, p),
    "evaluate": lambda p: load_section("evaluate", EvaluateParams, p),
    "package": lambda p: load_section("package", PackageParams, p),
    "runtime": load_runtime,
    **{s.stage: s.load_params for s in MODELS.values()},
}


def assert_one_line_error(proc, *needles):
    one_line(proc, *needles, prefix="error: params.yaml: ")


def written(workdir):
    return [p for d in ("data", "models", "state", "metrics") if (workdir / d).exists()
            for p in (workdir / d).rglob("*") if p.is_file()]


BAD_VALUES = [
    ("download", {"download": {"timeout": "soon"}}, ["download.timeout", "'soon'"]),
    ("download", {"download": {"sources": ["ftp://example.invalid/x"]}},
     ["download.sources", "unknown source scheme 'ftp'"]),
    ("download", {"download": {"retries": -1}}, ["download.retries", "-1"]),
    ("download", {"download": {"bogus": 1}}, ["download.bogus", "Extra inputs"]),
    ("preprocess", {"preprocess": {"val_size": -5}}, ["preprocess.val_size", "-5"]),
    ("preprocess", {"preprocess": {"seed": "one"}}, ["preprocess.seed"]),
    ("train-lenet", {"train_lenet": {"optimizer": "adagrad"}},
     ["train_lenet.optimizer", "'adagrad'"]),
    ("train-lenet", {"train_lenet": {"lr": -0.1}}, ["train_lenet.lr", "greater than 0"]),
    ("train-alexnet", {"train_alexnet": {"arch": {"dropout": 1.0}}},
     ["train_alexnet.arch.dropout", "less than 1"]),
    ("train-alexnet", {"train_alexnet": {"arch": {"dropout": -0.1}}},
     ["train_alexnet.arch.dropout"]),
    ("train-lenet", {"train_lenet": {"batch_size": 0}}, ["train_lenet.batch_size"]),
    ("evaluate", {"evaluate": {"batch_size": "big"}}, ["evaluate.batch_size"]),
    ("package", {"package": {"opset": 9}}, ["package.opset", "greater than or equal to 17"]),
    ("package", {"package": {"max_logit_diff": 0}}, ["package.max_logit_diff"]),
    # non-finite floats (YAML's .inf / .nan)
    ("train-lenet", {"train_lenet": {"lr": float("inf")}}, ["train_lenet.lr", "finite"]),
    ("train-lenet", {"train_lenet": {"weight_decay": float("inf")}},
     ["train_lenet.weight_decay", "finite"]),
    ("train-alexnet", {"train_alexnet": {"label_smoothing": float("nan")}},
     ["train_alexnet.label_smoothing", "finite"]),
    ("train-lenet", {"train_lenet": {"augment": {"erase_area": [0.1, float("nan")]}}},
     ["train_lenet.augment.erase_area"]),
    ("download", {"download": {"timeout": float("inf")}}, ["download.timeout"]),
    # seeds and sizes within what torch, NumPy and scikit-learn accept
    ("preprocess", {"preprocess": {"seed": -1}}, ["preprocess.seed", "-1"]),
    ("preprocess", {"preprocess": {"seed": 2**32}}, ["preprocess.seed", "4294967296"]),
    ("train-lenet", {"train_lenet": {"seed": -1}}, ["train_lenet.seed"]),
    ("train-lenet", {"train_lenet": {"seed": 2**64}}, ["train_lenet.seed"]),
    ("preprocess", {"preprocess": {"val_size": 5}}, ["preprocess.val_size", "one image per class"]),
    ("train-lenet", {"train_lenet": {"epochs": 10**9}}, ["train_lenet.epochs"]),
    ("train-alexnet", {"train_alexnet": {"arch": {"channels": [4, 8, 0]}}},
     ["train_alexnet.arch.channels"]),
    ("train-alexnet", {"train_alexnet": {"arch": {"fc": 10**9}}}, ["train_alexnet.arch.fc"]),
    ("train-lenet", {"train_lenet": {"arch": {"fc": 10}}}, ["train_lenet.arch.fc", "Extra"]),
    ("runtime", {"runtime": {"master_port": 70000}}, ["runtime.master_port"]),
    ("train-lenet", {"train_lenet": {"batch_size": 33, "distributed": {"nproc": 2}}},
     ["train_lenet.batch_size: 33 does not divide among 2 processes"]),
]


@pytest.mark.parametrize("loader, updates, needles", BAD_VALUES)
def test_bad_value(workdir, monkeypatch, loader, updates, needles):
    set_params(workdir, updates)
    monkeypatch.chdir(workdir)
    with pytest.raises(UserError) as err:
        LOADERS[loader]("params.yaml")
    message = str(err.value)
    assert message.startswith("params.yaml: ") and "\n" not in message
    for n in needles:
        assert n in message, message


@pytest.mark.e2e
@pytest.mark.parametrize("stage, updates, needles", [
    ("download", {"download": {"retries": -1}}, ["download.retries", "-1"]),
    ("train-alexnet", {"train_alexnet": {"arch": {"dropout": 1.0}}},
     ["train_alexnet.arch.dropout", "less than 1"]),
    ("evaluate", {"evaluate": {"batch_size": "big"}}, ["evaluate.batch_size"]),
    ("package", {"package": {"opset": 9}}, ["package.opset", "greater than or equal to 17"]),
    ("package", {"package": {"max_logit_diff": 0}}, ["package.max_logit_diff"]),
])
def test_a_bad_value_stops_the_stage_in_one_line_writing_nothing(workdir, stage, updates,
                                                                 needles):
    set_params(workdir, updates)
    proc = run_stage(workdir, stage)
    assert_one_line_error(proc, *needles)
    assert written(workdir) == []


def leaf_keys(tree: dict, prefix: str = "") -> list[str]:
    out = []
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and key != "sha256":
            out += leaf_keys(value, path + ".")
        else:
            out.append(path)
    return out


PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
SECTION_LOADER = {"download": "download", "preprocess": "preprocess", "evaluate": "evaluate",
                  "package": "package",
                  "runtime": "runtime", **{s.section: s.stage for s in MODELS.values()}}


def test_every_section_has_a_loader():
    assert set(PARAMS) == set(SECTION_LOADER)


@pytest.mark.parametrize("key", leaf_keys(PARAMS))
def test_every_key_is_required(tmp_path, monkeypatch, key):
    """One rule for defaults, in every section: there are none, so deleting any key of
    params.yaml is an error that names it (never a silent fallback to a code default)."""
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    *parents, last = key.split(".")
    node = data
    for p in parents:
        node = node[p]
    del node[last]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(data))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=f"^params.yaml: {key}: Field required$"):
        LOADERS[SECTION_LOADER[parents[0] if parents else key]]("params.yaml")


def test_the_committed_params_load():
    for load in LOADERS.values():
        load(ROOT / "params.yaml")


def test_another_params_file_is_named_in_the_error(workdir, monkeypatch):
    other = workdir / "other.yaml"
    other.write_text((workdir / "params.yaml").read_text())
    set_params(other, {"train_lenet": {"lr": -1}})
    monkeypatch.chdir(workdir)
    with pytest.raises(UserError, match="^other.yaml: train_lenet.lr"):
        spec("lenet").load_params("other.yaml")


def test_unknown_model_is_one_line():
    with pytest.raises(UserError, match="unknown model 'resnet' .*lenet.*train-lenet"):
        spec("resnet")


def test_missing_section(workdir):
    text = (workdir / "params.yaml").read_text().replace("preprocess:", "preprocessing:")
    (workdir / "params.yaml").write_text(text)
    with pytest.raises(UserError, match="section 'preprocess' is missing"):
        LOADERS["preprocess"](workdir / "params.yaml")


@pytest.mark.e2e
@pytest.mark.parametrize("val_size, needle", [
    (600, "leaves no training images"),
    (595, "leaves 5 training images for 10 classes"),
])
def test_val_size_too_large(prepared, val_size, needle):
    import shutil
    shutil.rmtree(prepared / "data/prepared")
    set_params(prepared, {"preprocess": {"val_size": val_size}})
    proc = run_stage(prepared, "preprocess")
    assert_one_line_error(proc, "preprocess.val_size", needle)
    assert not (prepared / "data" / "prepared").exists()


@pytest.mark.e2e
@pytest.mark.parametrize("args, needle", [
    (["stages/train.py"], "the following arguments are required: model"),
    (["stages/evaluate.py", "--models"], "expected at least one argument"),
    (["stages/preprocess.py", "data/raw", "data/prepared", "--params", "stages"],
     "cannot read stages"),
    (["stages/train.py", "resnet", "--prepared", "p", "--out", "o", "--curves", "c",
      "--timings", "t", "--state", "s", "--live", "l"], "unknown model 'resnet'"),
])
def test_bad_command_line_is_one_line(workdir, args, needle):
    proc = run_script(workdir, *args)
    one_line(proc, needle)


@pytest.mark.e2e
def test_an_unknown_option_is_one_line(workdir):
    one_line(run_stage(workdir, "train-lenet", "--bogus"), "unrecognized arguments: --bogus")


@pytest.mark.e2e
def test_distributed_launch_checks_before_torchrun(workdir):
    from tests.support import free_port
    set_params(workdir, {"train_lenet": {"distributed": {"nproc": 2}},
                         "runtime": {"master_port": free_port()}})
    proc = run_stage(workdir, "train-lenet")  # nothing prepared yet
    one_line(proc, "data/prepared/train.pt not found", "dvc repro preprocess")
    assert "torch.distributed" not in proc.stderr
