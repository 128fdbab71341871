"""End-to-end: real `dvc` commands in a temporary git repo holding a copy of the project."""

import json

import pytest

from fmnist.params import RAW_FILES
from tests.support import commit, ran
from tools.smoke import run, stage_paths, validate_pipeline

pytestmark = pytest.mark.e2e






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


# ---------------------------------------------------------------- params deps


def status_stages(repo, env) -> set[str]:
    out = json.loads(run(["dvc", "status", "--json"], repo, env).stdout or "{}")
    return set(out)


RUNTIME_ONLY = [
    {"download": {"timeout": 7}}, {"download": {"retries": 2}}, {"download": {"backoff": 0.5}},
    {"runtime": {"resume": False}}, {"runtime": {"master_addr": "10.0.0.9"}},
    {"runtime": {"master_port": 29999}}, {"runtime": {"node_rank": 1}},
]
RESULT_CHANGING = [  # (update, the stage it changes, whether its outputs change)
    ({"download": {"sources": ["{synthetic}", "/elsewhere"]}}, "download", False),
    ({"preprocess": {"seed": 7}}, "preprocess", True),
    ({"train_lenet": {"lr": 0.02}}, "train-lenet", True),
    ({"train_alexnet": {"arch": {"dropout": 0.3}}}, "train-alexnet", True),
    ({"evaluate": {"misclassified": 4}}, "evaluate", True),
]


@pytest.fixture(scope="module")
def ran_repo(tmp_path_factory, synthetic):
    from tools.smoke import make_repo, repo_env, tiny_overrides, update_params
    tmp = tmp_path_factory.mktemp("params-deps")
    src, sha = synthetic
    (tmp / "home").mkdir()
    repo = make_repo(tmp / "repo", repo_env(tmp / "home"))
    env = repo_env(tmp / "home", src=repo / "src")
    update_params(repo / "params.yaml", tiny_overrides([str(src)], sha))
    run(["dvc", "repro"], repo, env)
    commit(repo, env, "run")
    return repo, env


def downstream(stage: str) -> set[str]:
    after = {"download": {"preprocess"}, "preprocess": {"train-lenet", "train-alexnet"},
             "train-lenet": {"evaluate"}, "train-alexnet": {"evaluate"}, "evaluate": set()}
    out, todo = {stage}, [stage]
    while todo:
        for nxt in after[todo.pop()]:
            if nxt not in out:
                out.add(nxt)
                todo.append(nxt)
    return out


@pytest.mark.parametrize("update", RUNTIME_ONLY, ids=lambda u: json.dumps(u))
def test_run_time_settings_rerun_nothing(ran_repo, update):
    from tools.smoke import update_params
    repo, env = ran_repo
    update_params(repo / "params.yaml", update)
    try:
        assert status_stages(repo, env) == set()
    finally:
        run(["git", "checkout", "params.yaml"], repo, env)


@pytest.mark.parametrize("update, stage, changes", RESULT_CHANGING,
                         ids=[r[1] for r in RESULT_CHANGING])
def test_a_result_changing_key_reruns_its_stage_and_what_follows(ran_repo, synthetic, update,
                                                                 stage, changes):
    from tools.smoke import update_params
    repo, env = ran_repo
    update = json.loads(json.dumps(update).replace("{synthetic}", str(synthetic[0])))
    update_params(repo / "params.yaml", update)
    try:
        assert stage in status_stages(repo, env)
        out = run(["dvc", "repro"], repo, env).stdout
        # the stage re-runs; what follows re-runs exactly when the stage's outputs change
        assert ran(out) == (downstream(stage) if changes else {stage}), out
    finally:
        run(["git", "reset", "-q", "--hard"], repo, env)
        run(["dvc", "checkout", "-q", "-f"], repo, env)
        assert status_stages(repo, env) == set()


# ---------------------------------------------------------------- pure outputs


def test_forced_rerun_of_every_stage_leaves_dvc_lock_unchanged(ran_repo):
    import shutil
    repo, env = ran_repo
    lock = (repo / "dvc.lock").read_text()
    for stage in ("download", "preprocess", "train-lenet", "train-alexnet", "evaluate"):
        shutil.rmtree(repo / "state", ignore_errors=True)  # so that training really trains
        out = run(["dvc", "repro", "-f", "-s", stage], repo, env).stdout
        assert ran(out) == {stage}
        assert (repo / "dvc.lock").read_text() == lock, f"`dvc repro -f {stage}` changed dvc.lock"
    # the timings did change (they are wall times), and they are not in dvc.lock
    timings = json.loads((repo / "metrics/timings/lenet.json").read_text())
    assert timings["train_seconds"] > 0 and "metrics/timings" not in lock
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], repo, env).stdout)
    assert "train_seconds" in json.dumps(shown)
