"""End-to-end: real `dvc` commands in a temporary git repo holding a copy of the project."""

import json

import pytest

from fmnist.params import RAW_FILES
from fmnist.smoke import run, stage_paths, validate_pipeline

pytestmark = pytest.mark.e2e


def ran(stdout: str) -> set[str]:
    return {line.split("'")[1] for line in stdout.splitlines()
            if line.startswith("Running stage '")}


def commit(repo, env, msg):
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-qm", msg], repo, env)


def test_download_and_preprocess_then_nothing_reruns(dvc_repo):
    repo, env = dvc_repo
    out = run(["dvc", "repro", "preprocess"], repo, env).stdout
    assert ran(out) == {"download", "preprocess"}
    assert sorted(p.name for p in (repo / "data/raw").iterdir()) == sorted(RAW_FILES)
    assert {p.name for p in (repo / "data/prepared").iterdir()} == {
        "train.pt", "val.pt", "test.pt", "stats.json"}
    again = run(["dvc", "repro", "preprocess"], repo, env).stdout
    assert ran(again) == set()
    assert run(["dvc", "status", "preprocess"], repo, env).stdout.strip() in (
        "Data and pipelines are up to date.", "")
    lock = (repo / "dvc.lock").read_text()
    assert "data/raw" in lock and "data/prepared" in lock


def test_full_pipeline_and_metrics_diff_across_commits(dvc_repo):
    repo, env = dvc_repo
    first = run(["dvc", "repro"], repo, env).stdout
    assert ran(first) == set(stage_paths(repo))
    assert validate_pipeline(repo, env) == []
    metrics = json.loads((repo / "metrics/lenet.json").read_text())
    assert metrics["trainable_params"] == 44_426
    assert {"loss", "accuracy", "macro_f1", "weighted_f1", "top2_accuracy",
            "per_class"} <= set(metrics["test"])
    commit(repo, env, "baseline run")

    # An AlexNet param re-runs train-alexnet and evaluate, and nothing else.
    params = (repo / "params.yaml").read_text()
    marker = "train_alexnet:\n"
    start = params.index(marker)
    lr_at = params.index("  lr: ", start)
    end = params.index("\n", lr_at)
    (repo / "params.yaml").write_text(params[:lr_at] + "  lr: 0.01" + params[end:])
    second = run(["dvc", "repro"], repo, env).stdout
    assert ran(second) == {"train-alexnet", "evaluate"}
    commit(repo, env, "alexnet lr 0.01")

    diff = json.loads(run(["dvc", "metrics", "diff", "HEAD~1", "--json"], repo, env).stdout)
    alex = diff.get("metrics/alexnet.json", {})
    assert any(alex.get(k, {}).get("diff") for k in ("test.accuracy", "test.loss"))
    lenet = diff.get("metrics/lenet.json", {})
    assert not any(v.get("diff") for v in lenet.values())
    pdiff = json.loads(run(["dvc", "params", "diff", "HEAD~1", "--json"], repo, env).stdout)
    assert pdiff["params.yaml"]["train_alexnet.lr"]["new"] == 0.01

    shown = run(["dvc", "plots", "show", "--json"], repo, env).stdout
    assert "metrics/confusion/alexnet.csv" in shown and "Loss" in shown
