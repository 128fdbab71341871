"""Bad params end in one line naming the key, exit code 2, and nothing written."""

import pytest

from tests.support import assert_one_line_error as one_line
from tests.support import run_script, set_params


def assert_one_line_error(proc, *needles):
    one_line(proc, *needles, prefix="error: params.yaml: ")


def written(workdir):
    return [p for d in ("data", "models", "state", "metrics") if (workdir / d).exists()
            for p in (workdir / d).rglob("*") if p.is_file()]


@pytest.mark.parametrize("stage, updates, needles", [
    ("download", {"download": {"timeout": "soon"}}, ["download.timeout", "'soon'"]),
    ("download", {"download": {"sources": ["ftp://example.invalid/x"]}},
     ["download.sources", "unknown source scheme 'ftp'"]),
    ("download", {"download": {"retries": -1}}, ["download.retries", "-1"]),
    ("download", {"download": {"bogus": 1}}, ["download.bogus", "Extra inputs"]),
    ("preprocess", {"preprocess": {"val_size": -5}}, ["preprocess.val_size", "-5"]),
    ("preprocess", {"preprocess": {"seed": "one"}}, ["preprocess.seed"]),
    ("train lenet", {"train_lenet": {"optimizer": "adagrad"}},
     ["train_lenet.optimizer", "'adagrad'"]),
    ("train lenet", {"train_lenet": {"lr": -0.1}}, ["train_lenet.lr", "greater than 0"]),
    ("train alexnet", {"train_alexnet": {"arch": {"dropout": 1.0}}},
     ["train_alexnet.arch.dropout", "less than 1"]),
    ("train alexnet", {"train_alexnet": {"arch": {"dropout": -0.1}}},
     ["train_alexnet.arch.dropout"]),
    ("train lenet", {"train_lenet": {"batch_size": 0}}, ["train_lenet.batch_size"]),
    ("evaluate", {"evaluate": {"batch_size": "big"}}, ["evaluate.batch_size"]),
    # non-finite floats (YAML's .inf / .nan)
    ("train lenet", {"train_lenet": {"lr": float("inf")}}, ["train_lenet.lr", "finite"]),
    ("train lenet", {"train_lenet": {"weight_decay": float("inf")}},
     ["train_lenet.weight_decay", "finite"]),
    ("train alexnet", {"train_alexnet": {"label_smoothing": float("nan")}},
     ["train_alexnet.label_smoothing", "finite"]),
    ("train lenet", {"train_lenet": {"augment": {"erase_area": [0.1, float("nan")]}}},
     ["train_lenet.augment.erase_area"]),
    ("download", {"download": {"timeout": float("inf")}}, ["download.timeout"]),
    # seeds and sizes within what torch, NumPy and scikit-learn accept
    ("preprocess", {"preprocess": {"seed": -1}}, ["preprocess.seed", "-1"]),
    ("preprocess", {"preprocess": {"seed": 2**32}}, ["preprocess.seed", "4294967296"]),
    ("train lenet", {"train_lenet": {"seed": -1}}, ["train_lenet.seed"]),
    ("train lenet", {"train_lenet": {"seed": 2**64}}, ["train_lenet.seed"]),
    ("preprocess", {"preprocess": {"val_size": 5}}, ["preprocess.val_size", "one image per class"]),
    ("train lenet", {"train_lenet": {"epochs": 10**9}}, ["train_lenet.epochs"]),
    ("train alexnet", {"train_alexnet": {"arch": {"channels": [4, 8, 0]}}},
     ["train_alexnet.arch.channels"]),
    ("train alexnet", {"train_alexnet": {"arch": {"fc": 10**9}}}, ["train_alexnet.arch.fc"]),
    ("train lenet", {"train_lenet": {"arch": {"fc": 10}}}, ["train_lenet.arch.fc", "Extra"]),
    ("train lenet", {"runtime": {"master_port": 70000}}, ["runtime.master_port"]),
])
def test_bad_value(workdir, stage, updates, needles):
    set_params(workdir, updates)
    script, *args = stage.split()
    proc = run_script(workdir, f"stages/{script}.py", *args)
    assert_one_line_error(proc, *needles)
    assert written(workdir) == []


def test_another_params_file_is_named_in_the_error(workdir):
    other = workdir / "other.yaml"
    other.write_text((workdir / "params.yaml").read_text())
    set_params(other, {"train_lenet": {"lr": -1}})
    proc = run_script(workdir, "stages/train.py", "lenet", "--params", "other.yaml")
    one_line(proc, "other.yaml: train_lenet.lr", prefix="error: other.yaml: ")


def test_unknown_model_is_one_line(workdir):
    proc = run_script(workdir, "stages/train.py", "resnet")
    one_line(proc, "unknown model 'resnet'", "lenet")


def test_missing_section(workdir):
    text = (workdir / "params.yaml").read_text().replace("preprocess:", "preprocessing:")
    (workdir / "params.yaml").write_text(text)
    proc = run_script(workdir, "stages/preprocess.py")
    assert proc.returncode == 2
    assert "section 'preprocess' is missing" in proc.stderr


@pytest.mark.parametrize("val_size, needle", [
    (600, "leaves no training images"),
    (595, "leaves 5 training images for 10 classes"),
])
def test_val_size_too_large(workdir, val_size, needle):
    assert run_script(workdir, "stages/download.py").returncode == 0
    set_params(workdir, {"preprocess": {"val_size": val_size}})
    proc = run_script(workdir, "stages/preprocess.py")
    assert_one_line_error(proc, "preprocess.val_size", needle)
    assert not (workdir / "data" / "prepared").exists()


@pytest.mark.parametrize("args, needle", [
    (["stages/train.py"], "the following arguments are required: model"),
    (["stages/train.py", "lenet", "--bogus"], "unrecognized arguments: --bogus"),
    (["stages/evaluate.py", "--models"], "expected at least one argument"),
    (["stages/preprocess.py", "--params", "stages"], "cannot read stages"),
])
def test_bad_command_line_is_one_line(workdir, args, needle):
    proc = run_script(workdir, *args)
    one_line(proc, needle)


def test_distributed_launch_checks_before_torchrun(workdir):
    from tests.support import free_port
    set_params(workdir, {"train_lenet": {"distributed": {"nproc": 2}},
                         "runtime": {"master_port": free_port()}})
    proc = run_script(workdir, "stages/train.py", "lenet")  # nothing prepared yet
    one_line(proc, "data/prepared/train.pt not found", "dvc repro preprocess")
    assert "torch.distributed" not in proc.stderr
