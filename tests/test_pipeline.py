"""End-to-end: real `dvc` commands in a temporary git repo holding a copy of the project."""

import json

import pytest

from fmnist.idx import raw_name
from fmnist.params import RAW_FILES
from tests.support import commit, ran
from tools.repo import run, stage_paths, validate_pipeline

pytestmark = pytest.mark.e2e


def test_full_pipeline_then_nothing_reruns(committed_template, committed_repo):
    """Pipeline validation: `dvc repro` in a fresh repo ran every stage (the session's
    committed run), `dvc dag` works, every dep and out is there, `dvc status` is clean,
    and a second `dvc repro` runs nothing."""
    repo, env, _ = committed_repo
    assert ran(committed_template[2]) == set(stage_paths(repo))
    assert validate_pipeline(repo, env) == []
    assert sorted(p.name for p in (repo / "data/raw").iterdir()) == sorted(
        raw_name(n) for n in RAW_FILES)  # decompressed, as the hashes in params pin them
    assert {p.name for p in (repo / "data/prepared").iterdir()} == {
        "train.pt", "val.pt", "test.pt", "stats.json"}
    assert ran(run(["dvc", "repro"], repo, env).stdout) == set()
    metrics = json.loads((repo / "metrics/lenet.json").read_text())
    assert metrics["trainable_params"] == 44_426
    assert {"loss", "accuracy", "macro_f1", "weighted_f1", "top2_accuracy",
            "per_class"} <= set(metrics["test"])


def test_a_param_reruns_its_stage_and_metrics_diff_across_commits(committed_repo):
    repo, env, _ = committed_repo
    # A LeNet param, edited by hand, re-runs train-lenet and evaluate, and nothing else
    params = (repo / "params.yaml").read_text()
    start = params.index("train_lenet:\n")
    lr_at = params.index("  lr: ", start)
    end = params.index("\n", lr_at)
    (repo / "params.yaml").write_text(params[:lr_at] + "  lr: 0.02" + params[end:])
    second = run(["dvc", "repro"], repo, env).stdout
    assert ran(second) == {"train-lenet", "evaluate", "package"}
    commit(repo, env, "lenet lr 0.02")

    diff = json.loads(run(["dvc", "metrics", "diff", "HEAD~1", "--json"], repo, env).stdout)
    lenet = diff.get("metrics/lenet.json", {})
    assert any(lenet.get(k, {}).get("diff") for k in ("test.accuracy", "test.loss"))
    alex = diff.get("metrics/alexnet.json", {})
    assert not any(v.get("diff") for v in alex.values())
    pdiff = json.loads(run(["dvc", "params", "diff", "HEAD~1", "--json"], repo, env).stdout)
    assert pdiff["params.yaml"]["train_lenet.lr"]["new"] == 0.02

    shown = run(["dvc", "plots", "show", "--json"], repo, env).stdout
    assert "metrics/confusion/lenet.csv" in shown and "Loss" in shown


# ---------------------------------------------------------------- params deps


def status_stages(repo, env) -> set[str]:
    out = json.loads(run(["dvc", "status", "--json"], repo, env).stdout or "{}")
    return set(out)


RUNTIME_ONLY = [
    {"download": {"timeout": 7}}, {"download": {"retries": 2}}, {"download": {"backoff": 0.5}},
    {"runtime": {"resume": False}}, {"runtime": {"master_addr": "10.0.0.9"}},
    {"runtime": {"master_port": 29999}}, {"runtime": {"node_rank": 1}},
]
# (update, the stage it makes stale, what `dvc repro` then runs, or None: not run here).
# Running is DVC's part (a stage whose outputs change re-runs what follows): the case
# whose outputs stay the same runs here; one whose outputs change runs in
# test_a_param_reruns_its_stage_and_metrics_diff_across_commits.
RESULT_CHANGING = [
    ({"download": {"sources": ["{synthetic}", "/elsewhere"]}}, "download", {"download"}),
    ({"preprocess": {"seed": 7}}, "preprocess", None),
    ({"train_lenet": {"lr": 0.02}}, "train-lenet", None),
    ({"train_alexnet": {"arch": {"dropout": 0.3}}}, "train-alexnet", None),
    ({"evaluate": {"misclassified": 4}}, "evaluate", None),
]


@pytest.fixture(scope="module")
def ran_repo(committed_template, tmp_path_factory):
    """A copy of the committed repo, shared by this module's tests: each puts params and
    outputs back as it found them (resume states and timings may differ)."""
    from tests.support import copy_repo
    from tools.repo import repo_env
    template, _, _ = committed_template
    tmp = tmp_path_factory.mktemp("params-deps")
    (tmp / "home").mkdir()
    repo = copy_repo(template, tmp / "repo")
    return repo, repo_env(tmp / "home", src=repo / "src")


def downstream(stage: str) -> set[str]:
    after = {"download": {"preprocess"}, "preprocess": {"train-lenet", "train-alexnet"},
             "train-lenet": {"evaluate", "package"}, "train-alexnet": {"evaluate", "package"},
             "evaluate": {"package"}, "package": set()}
    out, todo = {stage}, [stage]
    while todo:
        for nxt in after[todo.pop()]:
            if nxt not in out:
                out.add(nxt)
                todo.append(nxt)
    return out


def test_run_time_settings_rerun_nothing(ran_repo):
    """Every run-time setting edited at once leaves every stage up to date (where one
    does not, each is tried alone to name it)."""
    from tools.repo import merge, update_params
    repo, env = ran_repo
    everything: dict = {}
    for update in RUNTIME_ONLY:
        everything = merge(everything, update)
    try:
        update_params(repo / "params.yaml", everything)
        if status_stages(repo, env) == set():
            return
        culprits = []
        for update in RUNTIME_ONLY:
            run(["git", "checkout", "params.yaml"], repo, env)
            update_params(repo / "params.yaml", update)
            if status_stages(repo, env):
                culprits.append(update)
        pytest.fail(f"these run-time settings make stages stale: {culprits}")
    finally:
        run(["git", "checkout", "params.yaml"], repo, env)


@pytest.mark.parametrize("update, stage, runs", RESULT_CHANGING,
                         ids=[r[1] for r in RESULT_CHANGING])
def test_a_result_changing_key_makes_its_stage_stale(ran_repo, synthetic, update, stage,
                                                    runs):
    from tools.repo import update_params
    repo, env = ran_repo
    update = json.loads(json.dumps(update).replace("{synthetic}", str(synthetic[0])))
    update_params(repo / "params.yaml", update)
    try:
        assert status_stages(repo, env) == {stage}  # that stage, and no other
        if runs is not None:
            out = run(["dvc", "repro"], repo, env).stdout
            assert ran(out) == runs and runs <= downstream(stage), out
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
    repo, env = ran_repo
    record = {}
    for stage in stage_paths(repo):
        before = snapshot(repo)
        # the finished run's resume state is still there: a forced run trains all the same
        out = run(["dvc", "repro", "-f", "-s", stage], repo, env).stdout
        assert ran(out) == {stage}
        if stage.startswith("train-"):
            assert "of a finished run; training from scratch" in out, out
        after = snapshot(repo)
        record[stage] = ((repo / "dvc.lock").read_text(),
                         {p for p, t in after.items() if before.get(p) != t})
    return record


def test_forced_rerun_of_every_stage_leaves_dvc_lock_unchanged(ran_repo, forced_reruns):
    repo, env = ran_repo
    lock = run(["git", "show", "HEAD:dvc.lock"], repo, env).stdout
    for stage, (after, _) in forced_reruns.items():
        assert after == lock, f"`dvc repro -f {stage}` changed dvc.lock"
    # the timings did change (they are wall times), and they are no stage's output
    import yaml
    timings = json.loads((repo / "metrics/timings/lenet.json").read_text())
    outs = {o["path"] for st in yaml.safe_load(lock)["stages"].values()
            for o in st.get("outs", [])}
    assert timings["train_seconds"] > 0 and "metrics/timings/lenet.json" not in outs
    assert "models/lenet" in outs
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], repo, env).stdout)
    assert "train_seconds" in json.dumps(shown)


def test_every_path_a_stage_writes_is_declared_in_dvc_yaml(ran_repo, forced_reruns):
    """dvc.yaml is the one place paths live: a stage writes its declared outs, metrics
    and plots, the top-level metrics (timings), and its resume state (the `--state` in
    its cmd: per machine, git-ignored, never cached), and nothing else (DVC itself
    writes dvc.lock)."""
    from fmnist.common import option, stage_command
    from tools.repo import pipeline
    repo, _ = ran_repo
    dvc = pipeline(repo)
    top_metrics = set(dvc.get("metrics", []))
    for stage, (_, written) in forced_reruns.items():
        declared = set(stage_paths(repo)[stage][1])
        state = set(option(stage_command(dvc, stage), "--state"))
        allowed = declared | top_metrics | state | {"dvc.lock"}
        assert written, f"{stage} wrote nothing"
        stray = sorted(p for p in written
                       if not any(p == a or p.startswith(a.rstrip("/") + "/") for a in allowed))
        assert stray == [], f"{stage} writes paths dvc.yaml does not declare: {stray}"


# ---------------------------------------------------------------- the README's commands

# Commands the README shows that are cheap and need no training: run as shown
CHEAP = ("dvc status", "dvc dag", "dvc params diff", "dvc metrics show", "dvc metrics diff",
         "fmnist")
# Lines with a value the user fills in (a repository's URL, their own photo) are not run
PLACEHOLDERS = ("OWNER/REPO", "shoe.jpg", "<")


def readme_commands() -> list[str]:
    import re

    from tools import ROOT
    blocks = re.findall(r"```sh\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    lines = [line.split("#")[0].strip() for b in blocks for line in b.splitlines()]
    return [line for line in lines if line.startswith(CHEAP)
            and not any(p in line for p in PLACEHOLDERS)]


def test_the_readmes_cheap_commands_work_as_shown(ran_repo):
    import shlex
    import shutil

    from tools import ROOT
    repo, env = ran_repo
    commands = readme_commands()
    assert {c.split()[0] for c in commands} == {"dvc", "fmnist"} and len(commands) >= 6
    assert any(c.startswith("fmnist predict") for c in commands)
    shutil.copytree(ROOT / "docs/examples", repo / "docs/examples", dirs_exist_ok=True)
    for command in commands:
        proc = run(shlex.split(command), repo, env, check=False)
        assert proc.returncode == 0, f"`{command}` failed:\n{proc.stdout}{proc.stderr}"
