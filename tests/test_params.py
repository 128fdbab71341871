"""Bad params end in one line naming the key, exit code 2, and nothing written."""

import pytest
from conftest import run_stage, set_params


def assert_one_line_error(proc, *needles):
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: params.yaml: ")
    for n in needles:
        assert n in lines[0], lines[0]


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
])
def test_bad_value(workdir, stage, updates, needles):
    set_params(workdir, updates)
    script, *args = stage.split()
    proc = run_stage(workdir, f"stages/{script}.py", *args)
    assert_one_line_error(proc, *needles)
    assert written(workdir) == []


def test_missing_section(workdir):
    text = (workdir / "params.yaml").read_text().replace("preprocess:", "preprocessing:")
    (workdir / "params.yaml").write_text(text)
    proc = run_stage(workdir, "stages/preprocess.py")
    assert proc.returncode == 2
    assert "section 'preprocess' is missing" in proc.stderr


def test_val_size_too_large(workdir):
    assert run_stage(workdir, "stages/download.py").returncode == 0
    set_params(workdir, {"preprocess": {"val_size": 600}})
    proc = run_stage(workdir, "stages/preprocess.py")
    assert_one_line_error(proc, "preprocess.val_size", "leaves no training images")
    assert not (workdir / "data" / "prepared").exists()
