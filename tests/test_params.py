"""Bad params end in one line naming the key, exit code 2, and nothing written.

The schema cases are validated in-process, as each stage loads its section; a few run
the stage itself, for the contract of the command (exit code 2, one line on stderr,
nothing written)."""

from functools import partial

import pytest
import yaml

from fmnist.common import UserError
from fmnist.models import MODELS, spec
from fmnist.params import RUNTIME_SECTION, STAGE_SECTIONS, load_runtime, load_section
from tests.support import assert_one_line_error as one_line
from tests.support import commit, run_script, run_stage, set_params
from tools import ROOT

LOADERS = {  # every section of params.yaml, by the stage that reads it
    **{name: partial(load_section, name, schema) for name, schema in STAGE_SECTIONS.items()},
    RUNTIME_SECTION: load_runtime,
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


# ---------------------------------------------------------------- read as DVC reads them

LOOKALIKES = "a: 0042\nb: 1:00\nc: no\nd: 0o17\ne: 010\nf: yes\ng: off\nh: 1e3\ni: 0x1F\n"


def test_params_are_read_as_dvc_reads_them():
    """YAML 1.2 (DVC's ruamel.yaml), not PyYAML's 1.1: an octal-, sexagesimal- or
    boolean-looking value means to the stage what `dvc params diff` shows."""
    from dvc.utils.serialize import parse_yaml

    from fmnist.params import load_yaml

    ours, dvcs = load_yaml(LOOKALIKES), parse_yaml(LOOKALIKES, "params.yaml")
    assert ours == dict(dvcs)
    assert ours["a"] == 42 and ours["b"] == "1:00" and ours["c"] == "no"
    assert yaml.safe_load(LOOKALIKES)["a"] == 34  # what the stages read before


def test_params_from_dvc_params_diff_are_the_stages(dvc_repo):
    """The same against `dvc params diff` itself, through a committed params file."""
    import json
    import subprocess

    from fmnist.params import read_params
    repo, env = dvc_repo
    (repo / "extra.yaml").write_text(LOOKALIKES)
    (repo / "dvc.yaml").write_text("stages:\n  s:\n    cmd: \"true\"\n    params:\n"
                                   "      - extra.yaml:\n" +
                                   "".join(f"        - {k}\n" for k in "abcdefghi"))
    commit(repo, env, "params that look like other types")  # --all: HEAD's values too
    proc = subprocess.run(["dvc", "params", "diff", "--all", "--json"], cwd=repo, env=env,
                          capture_output=True, text=True, check=True)
    diff = json.loads(proc.stdout)
    assert "extra.yaml" in diff, proc.stdout + proc.stderr
    shown = {k: v["new"] for k, v in diff["extra.yaml"].items()}
    assert shown == read_params(repo / "extra.yaml")


@pytest.mark.parametrize("key, value", [
    ("epochs", True), ("lr", "0.01"), ("threads", False), ("seed", 1.0),
    ("normalize", "no"), ("augment", {"hflip": 1}), ("numerics", True)])
def test_no_value_is_coerced(key, value):
    from fmnist.params import validate
    s = spec("lenet")
    data = yaml.safe_load((ROOT / "params.yaml").read_text())[s.section]
    if isinstance(value, dict):
        data[key] = {**data[key], **value}
    else:
        data[key] = value
    with pytest.raises(UserError, match=f"train_lenet.{key}"):
        validate(s.params, data, s.section)


def _check_params(tmp_path, edit):
    """`fmnist check-params` on params.yaml with ``edit`` applied, in-process (its
    command line and exit code as the console command has them): returncode, stderr."""
    import contextlib
    import io
    import types

    from fmnist.cli import main

    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    edit(data)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(data))
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()), \
            pytest.raises(SystemExit) as end:
        main(["check-params", "--params", str(tmp_path / "params.yaml")])
    return types.SimpleNamespace(returncode=end.value.code, stderr=err.getvalue())


@pytest.mark.parametrize("edit, needle", [
    (lambda d: d.update(trainig={}), "unknown section 'trainig'"),
    (lambda d: d["train_alexnet"]["arch"].update(fc=65536), "train_alexnet.arch: "),
    (lambda d: d["preprocess"].update(val_size=59995),
     "train_lenet.batch_size: 512 is more than the 5 training images"),
    (lambda d: d["train_lenet"].update(device="cuda"), "device 'cuda' was asked for"),
])
def test_check_params_refuses_what_a_stage_would_refuse(tmp_path, edit, needle):
    import torch
    if "cuda" in needle and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    proc = _check_params(tmp_path, edit)
    assert proc.returncode == 2 and needle in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1


def test_check_params_reads_the_split_sizes_from_the_downloaded_data(tmp_path):
    """Where `download` has run, check-params holds the split and the batch sizes against
    the images really there (600 here), not Fashion-MNIST's 60,000."""
    import shutil

    from tests.synthetic import write_dataset

    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    val_100 = _check_params(tmp_path, lambda d: d["preprocess"].update(val_size=100))
    assert val_100.returncode == 0, val_100.stderr  # no data yet: 59,900 images
    write_dataset(tmp_path / "data/raw", n_train=600, n_test=200, compressed=False)
    proc = _check_params(tmp_path, lambda d: d["preprocess"].update(val_size=100))
    assert proc.returncode == 2 and "512 is more than the 500 training images" in proc.stderr
    proc = _check_params(tmp_path, lambda d: d["preprocess"].update(val_size=595))
    assert proc.returncode == 2 and "leaves 5 training images for 10 classes" in proc.stderr
    assert proc.stderr.count("\n") == 1
