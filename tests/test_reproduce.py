"""`make reproduce` on a tiny synthetic project: reproduced, and an explained mismatch."""

import json
import subprocess

import pytest
import yaml

from tests.support import PY
from tools import ROOT
from tools.repo import run

pytestmark = pytest.mark.e2e


def committed_run(repo, env):
    run(["dvc", "repro"], repo, env)
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-qm", "committed run"], repo, env)


def reproduce(repo, tmp_path):
    return subprocess.run([PY, "-m", "fmnist.cli", "reproduce", "--repo", str(repo), "--keep",
                           str(tmp_path / "work")], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)


def test_committed_run_reproduces_bit_for_bit(dvc_repo, tmp_path):
    repo, env = dvc_repo
    committed_run(repo, env)
    proc = reproduce(repo, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for stage in ("download", "preprocess", "train-lenet"):
        assert f"{stage}: reproduced" in proc.stdout
    # the environment was recorded for the check to compare with
    env_record = json.loads((repo / "metrics/timings/lenet.json").read_text())["environment"]
    assert {"torch", "cpu", "cpu_flags", "threads", "device"} <= set(env_record)


def test_a_mismatch_says_what_differs(dvc_repo, tmp_path):
    repo, env = dvc_repo
    committed_run(repo, env)
    # As if the committed run had been made elsewhere: another torch, another model.pt
    timings = repo / "metrics/timings/lenet.json"
    record = json.loads(timings.read_text())
    record["environment"]["torch"] = "1.0.0"
    timings.write_text(json.dumps(record))
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    out = next(o for o in lock["stages"]["train-lenet"]["outs"] if o["path"] == "models/lenet")
    out["md5"] = "0" * 32 + ".dir"
    (repo / "dvc.lock").write_text(yaml.safe_dump(lock, sort_keys=False))
    run(["git", "commit", "-qam", "from another machine"], repo, env)
    proc = reproduce(repo, tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "preprocess: reproduced" in proc.stdout
    assert "train-lenet: NOT reproduced" in proc.stdout
    assert f"models/lenet: committed {'0' * 32}.dir" in proc.stdout
    assert "torch: committed run '1.0.0', here" in proc.stdout
