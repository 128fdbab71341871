"""`make check-lock` on a fresh clone (no data, no outputs): passes when dvc.lock holds
this code's and params' results, and names each stale stage, and why, when not."""

import subprocess

import pytest

from tests.support import PY
from tools import ROOT
from tools.repo import run, update_params

pytestmark = pytest.mark.e2e


def check_lock(repo, env):
    return subprocess.run([PY, "-m", "tools.check_lock", "--repo", str(repo)], cwd=ROOT,
                          env=env, capture_output=True, text=True)


@pytest.fixture
def clone(committed_repo, tmp_path):
    """A git clone of a repo whose committed dvc.lock is up to date: no data, no model."""
    repo, env, _ = committed_repo
    dst = tmp_path / "clone"
    run(["git", "clone", "-q", str(repo), str(dst)], tmp_path, env)
    assert not (dst / "data").exists() or not any((dst / "data").rglob("*.pt"))
    return dst, env


def restored(clone, env):
    run(["git", "checkout", "-q", "--", "."], clone, env)
    return clone


def test_check_lock(clone):
    clone, env = clone
    proc = check_lock(clone, env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "up to date" in proc.stdout

    # a code file of the training loop: both trainings, and evaluate after them
    with open(clone / "src/fmnist/train.py", "a") as f:
        f.write("\n# an edit\n")
    proc = check_lock(clone, env)
    assert proc.returncode == 1
    first = proc.stdout.splitlines()[0]
    assert first.startswith("results are stale: re-run `train-lenet`, `train-alexnet`, "
                            "`evaluate`"), first
    assert "  train-lenet: src/fmnist/train.py modified" in proc.stdout
    assert "  evaluate: downstream of train-alexnet, train-lenet" in proc.stdout
    assert "download" not in first and "preprocess" not in first

    # a result-changing param: its stage and what follows
    update_params(restored(clone, env) / "params.yaml", {"train_lenet": {"lr": 0.5}})
    proc = check_lock(clone, env)
    assert proc.returncode == 1
    assert proc.stdout.splitlines()[0].startswith(
        "results are stale: re-run `train-lenet`, `evaluate`")
    assert "  train-lenet: param train_lenet.lr modified" in proc.stdout

    # a metrics file edited by hand: not the result dvc.lock records
    path = restored(clone, env) / "metrics/lenet.json"
    path.write_text(path.read_text().replace('"epochs": 1', '"epochs": 2'))
    proc = check_lock(clone, env)
    assert proc.returncode == 1 and "metrics/lenet.json modified" in proc.stdout

    # run-time settings never make results stale
    update_params(restored(clone, env) / "params.yaml",
                  {"runtime": {"resume": False, "master_port": 29999},
                   "download": {"timeout": 7, "retries": 1, "backoff": 0.5}})
    proc = check_lock(clone, env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
