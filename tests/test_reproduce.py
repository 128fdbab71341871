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


def reproduce_json(repo, tmp_path, *stages):
    proc = subprocess.run([PY, "-m", "fmnist.cli", "reproduce", "--repo", str(repo), "--keep",
                           str(tmp_path / "work"), "--json", "--stages", *stages], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    return proc, (json.loads(proc.stdout) if proc.stdout.strip() else {})


def test_identical_and_equivalent_verdicts(committed_repo, tmp_path):
    """One `fmnist reproduce --json` of the LeNet (the cheaper training: the verdicts'
    logic is unit-tested below): download and preprocess reproduce bit for bit; the
    LeNet's record is edited as if made on another machine (another torch, a model.pt
    hash that cannot match), but its model is the same: equivalent, with the accuracies
    and agreement that show it, and exit 0. The environment that differs is named."""
    repo, env, _ = committed_repo
    timings = repo / "metrics/timings/lenet.json"
    record = json.loads(timings.read_text())
    assert {"torch", "cpu", "cpu_flags", "threads", "device", "numerics"} <= set(
        record["environment"])
    record["environment"]["torch"] = "1.0.0"
    timings.write_text(json.dumps(record))
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    out = next(o for o in lock["stages"]["train-lenet"]["outs"]
               if o["path"] == "models/lenet")
    out["md5"] = "0" * 32 + ".dir"
    (repo / "dvc.lock").write_text(yaml.safe_dump(lock, sort_keys=False))
    run(["git", "commit", "-qam", "from another machine"], repo, env)
    proc, got = reproduce_json(repo, tmp_path, "train-lenet")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for stage in ("download", "preprocess"):
        assert got[stage]["bitwise"] is True and got[stage]["verdict"] == "identical"
    lenet = got["train-lenet"]
    assert lenet["bitwise"] is False and lenet["verdict"] == "equivalent", lenet
    assert lenet["agreement"] == 1.0 and lenet["p_value"] == 1.0
    assert lenet["test_accuracy"]["committed"] == lenet["test_accuracy"]["here"]
    assert f"models/lenet: committed {'0' * 32}.dir" in " ".join(lenet["outputs"])
    assert any(line.startswith("torch: committed run '1.0.0', here")
               for line in lenet["environment"]), lenet


def test_a_model_of_another_recipe_is_different(committed_repo, tmp_path):
    """The committed LeNet's predictions are those of a model that learned nothing (one
    class for every image) and its hash cannot match: the re-trained LeNet is
    `different`, the first line says so, and the exit code is 1."""
    repo, env, _ = committed_repo
    csv = repo / "metrics/confusion/lenet.csv"
    rows = csv.read_text().splitlines()
    csv.write_text("\n".join([rows[0], *(f"{r.split(',')[0]},Bag" for r in rows[1:])]) + "\n")
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    next(o for o in lock["stages"]["train-lenet"]["outs"]
         if o["path"] == "models/lenet")["md5"] = "1" * 32 + ".dir"
    (repo / "dvc.lock").write_text(yaml.safe_dump(lock, sort_keys=False))
    run(["git", "commit", "-qam", "another recipe's results"], repo, env)
    proc = reproduce(repo, tmp_path, "train-lenet")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    first = proc.stdout.splitlines()
    assert first[0] == "download: identical (reproduced bit for bit)", proc.stdout
    assert first[2].startswith("train-lenet: different (not bit-identical; test accuracy"), \
        proc.stdout


def test_the_verdict_of_two_models_predictions():
    from fmnist.reproduce import compare_predictions, mcnemar_p

    labels = [i % 10 for i in range(1000)]
    same = compare_predictions(labels, labels, labels)
    assert (same.agreement, same.p_value, same.verdict) == (1.0, 1.0, "equivalent")
    # 20 images each right only for one of them: accuracy equal, p = 1
    a = [(y + 1) % 10 if i < 20 else y for i, y in enumerate(labels)]
    b = [(y + 1) % 10 if 20 <= i < 40 else y for i, y in enumerate(labels)]
    swap = compare_predictions(labels, a, b)
    assert swap.verdict == "equivalent" and swap.only_committed == swap.only_here == 20
    # 30 images better here and none worse: significant, and 0.03 apart
    c = [(y + 1) % 10 if i < 30 else y for i, y in enumerate(labels)]
    better = compare_predictions(labels, c, labels)
    assert better.verdict == "different" and better.p_value < 1e-8
    assert abs(mcnemar_p(0, 30) - 2 * 0.5 ** 30) < 1e-15
    # 5 images better here and none worse: p 0.0625, 0.005 apart: equivalent; 6: p 0.031
    five = [(y + 1) % 10 if i < 5 else y for i, y in enumerate(labels)]
    assert compare_predictions(labels, five, labels).verdict == "equivalent"
    six = [(y + 1) % 10 if i < 6 else y for i, y in enumerate(labels)]
    assert compare_predictions(labels, six, labels).verdict == "different"
    # not significant (p 0.68), but further apart (0.007) than MAX_ACCURACY_GAP
    f = [(y + 1) % 10 if i < 100 else y for i, y in enumerate(labels)]
    g = [(y + 1) % 10 if 100 <= i < 207 else y for i, y in enumerate(labels)]
    wide = compare_predictions(labels, f, g)
    assert wide.p_value > 0.5 and wide.verdict == "different"


def test_keep_refuses_a_folder_it_did_not_make(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    proc = subprocess.run([PY, "-m", "fmnist.cli", "reproduce", "--keep", str(mine)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "holds other files" in proc.stderr
    assert (mine / "thesis.tex").read_text() == "precious"


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
