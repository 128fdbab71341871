"""`make reproduce` on a tiny synthetic project: reproduced, and an explained mismatch."""

import json
import subprocess

import pytest
import yaml

from tests.support import PY
from tools import ROOT
from tools.repo import run

pytestmark = pytest.mark.e2e


def reproduce(repo, tmp_path, *stages):
    return subprocess.run([PY, "-m", "fmnist.cli", "reproduce", "--repo", str(repo), "--keep",
                           str(tmp_path / "work"), "--stages", *stages], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


def test_a_committed_run_reproduces_and_a_mismatch_says_what_differs(committed_repo,
                                                                       tmp_path):
    """One `fmnist reproduce` of both trainings: the LeNet's committed record is the
    true one, so it reproduces bit for bit; the AlexNet's is edited as if made on
    another machine (another torch, another model.pt), so the check names the output
    and how the environments differ, and exits 1."""
    repo, env, _ = committed_repo
    timings = repo / "metrics/timings/alexnet.json"
    record = json.loads(timings.read_text())
    assert {"torch", "cpu", "cpu_flags", "threads", "device"} <= set(record["environment"])
    record["environment"]["torch"] = "1.0.0"
    timings.write_text(json.dumps(record))
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    out = next(o for o in lock["stages"]["train-alexnet"]["outs"]
               if o["path"] == "models/alexnet")
    out["md5"] = "0" * 32 + ".dir"
    (repo / "dvc.lock").write_text(yaml.safe_dump(lock, sort_keys=False))
    run(["git", "commit", "-qam", "from another machine"], repo, env)
    proc = reproduce(repo, tmp_path, "train-lenet", "train-alexnet")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    for stage in ("download", "preprocess", "train-lenet"):
        assert f"{stage}: reproduced" in proc.stdout, proc.stdout
    assert "train-alexnet: NOT reproduced" in proc.stdout
    assert f"models/alexnet: committed {'0' * 32}.dir" in proc.stdout
    assert "torch: committed run '1.0.0', here" in proc.stdout
    assert "train-lenet: NOT" not in proc.stdout


def test_a_mismatch_names_the_packages_installed_unlike_the_lock(tmp_path):
    import json
    import re

    from fmnist.reproduce import explain
    from fmnist.stack import LOCK_FILE
    from tools import ROOT

    clone = tmp_path / "clone"
    (clone / "metrics").mkdir(parents=True)
    env = {"environment": {"torch": "2.14.1", "cpu": "x"}, "precision": "none"}
    (clone / "metrics/t.json").write_text(json.dumps(env))
    lock = re.sub(r"\nnumpy==\S+", "\nnumpy==1.0.0", (ROOT / LOCK_FILE).read_text())
    (clone / LOCK_FILE).write_text(lock)
    lines = explain(clone, "train-lenet", "metrics/t.json", json.dumps(env))
    assert any("installed here unlike requirements.lock" in x and "numpy: locked 1.0.0" in x
               for x in lines), lines
    (clone / LOCK_FILE).write_text((ROOT / LOCK_FILE).read_text())
    assert explain(clone, "train-lenet", "metrics/t.json", json.dumps(env)) == [
        "the environment matches the committed record and the lock: the code, data or "
        "params differ, or a kernel is not deterministic here"]
