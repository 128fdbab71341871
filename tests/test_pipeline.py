"""End-to-end: real `dvc` commands in a temporary git repo holding a copy of the project."""

import json

import pytest

from fmnist.params import RAW_FILES
from tests.support import commit, ran
from tools.repo import run, stage_paths, validate_pipeline

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
    from tests.support import tiny_overrides
    from tools.repo import make_repo, repo_env, update_params
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
    from tools.repo import update_params
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
    from tools.repo import update_params
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


# ---------------------------------------------------------------- pure outputs, paths


def snapshot(repo) -> dict[str, int]:
    """Every file of the repo outside git's and DVC's own folders: path -> mtime (ns)."""
    return {str(p.relative_to(repo)): p.stat().st_mtime_ns for p in repo.rglob("*")
            if p.is_file() and not {".git", ".dvc"} & set(p.relative_to(repo).parts)}


@pytest.fixture(scope="module")
def forced_reruns(ran_repo):
    """Each stage re-run alone with `dvc repro -f -s`: dvc.lock after it, and the files
    it wrote (new or rewritten)."""
    import shutil
    repo, env = ran_repo
    record = {}
    for stage in stage_paths(repo):
        shutil.rmtree(repo / "state", ignore_errors=True)  # so that training really trains
        before = snapshot(repo)
        out = run(["dvc", "repro", "-f", "-s", stage], repo, env).stdout
        assert ran(out) == {stage}
        after = snapshot(repo)
        record[stage] = ((repo / "dvc.lock").read_text(),
                         {p for p, t in after.items() if before.get(p) != t})
    return record


def test_forced_rerun_of_every_stage_leaves_dvc_lock_unchanged(ran_repo, forced_reruns):
    repo, env = ran_repo
    lock = run(["git", "show", "HEAD:dvc.lock"], repo, env).stdout
    for stage, (after, _) in forced_reruns.items():
        assert after == lock, f"`dvc repro -f {stage}` changed dvc.lock"
    # the timings did change (they are wall times), and they are not in dvc.lock
    timings = json.loads((repo / "metrics/timings/lenet.json").read_text())
    assert timings["train_seconds"] > 0 and "metrics/timings" not in lock
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], repo, env).stdout)
    assert "train_seconds" in json.dumps(shown)


def test_every_path_a_stage_writes_is_declared_in_dvc_yaml(ran_repo, forced_reruns):
    """dvc.yaml is the one place paths live: a stage writes its declared outs, metrics
    and plots, the top-level metrics (timings), and its resume state (the `--state` in
    its cmd: per machine, git-ignored, never cached), and nothing else."""
    import shlex

    import yaml
    repo, _ = ran_repo
    dvc = yaml.safe_load((repo / "dvc.yaml").read_text())
    top_metrics = set(dvc.get("metrics", []))
    for stage, (_, written) in forced_reruns.items():
        declared = set(stage_paths(repo)[stage][1])
        words = shlex.split(dvc["stages"][stage]["cmd"])
        state = {words[words.index("--state") + 1]} if "--state" in words else set()
        allowed = declared | top_metrics | state
        assert written, f"{stage} wrote nothing"
        stray = sorted(p for p in written
                       if not any(p == a or p.startswith(a.rstrip("/") + "/") for a in allowed))
        assert stray == [], f"{stage} writes paths dvc.yaml does not declare: {stray}"


# ---------------------------------------------------------------- the README's commands

# Commands the README shows that are cheap and need no training: run as shown
CHEAP = ("dvc status", "dvc dag", "dvc params diff", "dvc metrics show", "dvc metrics diff",
         "fmnist")


def readme_commands() -> list[str]:
    import re

    from tools import ROOT
    blocks = re.findall(r"```sh\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    lines = [line.split("#")[0].strip() for b in blocks for line in b.splitlines()]
    return [line for line in lines if line.startswith(CHEAP)]


def test_the_readmes_cheap_commands_work_as_shown(ran_repo):
    import shlex
    repo, env = ran_repo
    commands = readme_commands()
    assert {c.split()[0] for c in commands} == {"dvc", "fmnist"} and len(commands) >= 6
    for command in commands:
        proc = run(shlex.split(command), repo, env, check=False)
        assert proc.returncode == 0, f"`{command}` failed:\n{proc.stdout}{proc.stderr}"
