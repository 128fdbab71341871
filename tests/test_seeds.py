"""tools.seeds: which DVC experiments count as another seed of the committed recipe."""

import json
import shutil
import statistics
import subprocess
import sys

import pytest

from tools.seeds import experiments, missing_runs, summary

PARAMS = {"train_lenet": {"seed": 1, "lr": 0.01}, "train_alexnet": {"seed": 1, "lr": 0.002}}
PATHS = {"lenet": "metrics/lenet.json", "alexnet": "metrics/alexnet.json"}


def metrics(single, hflip):
    return {"test_views": {"headline": "hflip", "single": {"accuracy": single, "loss": 0.3},
                           "hflip": {"accuracy": hflip, "loss": 0.3}}}


def shown(*exps):
    """`dvc exp show --json`'s shape: the workspace, then a commit with its experiments."""
    return [{"rev": "workspace", "experiments": None},
            {"rev": "abcdef0123", "experiments": [
                {"executor": state and {"state": state}, "revs": [{
                    "name": name, "data": {
                        "params": {"params.yaml": {"data": params}},
                        "metrics": {path: {"data": m} for path, m in ms.items()}}}]}
                for name, state, params, ms in exps]}]


def with_seed(model, seed, **other):
    section = f"train_{model}"
    return {**PARAMS, section: {**PARAMS[section], "seed": seed, **other}}


def test_only_runs_that_change_nothing_but_that_models_seed_count():
    committed = {"lenet": metrics(0.91, 0.92), "alexnet": metrics(0.93, 0.94)}
    exps = experiments(shown(
        ("s2", None, with_seed("lenet", 2), {PATHS["lenet"]: metrics(0.90, 0.915)}),
        ("s3", None, with_seed("lenet", 3), {PATHS["lenet"]: metrics(0.92, 0.925)}),
        ("lr", None, with_seed("lenet", 4, lr=0.02), {PATHS["lenet"]: metrics(0.5, 0.5)}),
        ("failed", "failed", with_seed("lenet", 5), {PATHS["lenet"]: metrics(0.1, 0.1)}),
        ("again", None, with_seed("lenet", 2), {PATHS["lenet"]: metrics(0.2, 0.2)}),
        ("a2", None, with_seed("alexnet", 2), {PATHS["alexnet"]: metrics(0.935, 0.945)}),
    ))
    out = summary(PARAMS, committed, exps, PATHS)
    lenet = out["lenet"]
    # a seed run twice counts once (the first by name: the same recipe and seed, the
    # same bits); another lr and a failed run do not count
    assert [(r["seed"], r["run"]) for r in lenet["runs"]] == [
        (1, "committed"), (2, "again (abcdef0)"), (3, "s3 (abcdef0)")]
    seeds = {r["seed"]: r["hflip"] for r in lenet["runs"]}
    assert lenet["hflip"]["mean"] == pytest.approx(statistics.fmean(seeds.values()))
    assert lenet["hflip"]["std"] == pytest.approx(statistics.stdev(seeds.values()))
    assert [r["seed"] for r in out["alexnet"]["runs"]] == [1, 2]
    assert out["alexnet"]["single"]["mean"] == pytest.approx(0.9325)


def test_the_committed_run_alone_has_no_spread():
    committed = {"lenet": metrics(0.91, 0.92), "alexnet": metrics(0.93, 0.94)}
    out = summary(PARAMS, committed, [], PATHS)
    assert out["lenet"]["hflip"] == {"mean": 0.92, "std": 0.0}


def test_a_run_the_file_holds_but_dvc_does_not_list_is_reported_missing():
    committed = {"lenet": metrics(0.91, 0.92), "alexnet": metrics(0.93, 0.94)}
    exps = experiments(shown(
        ("s2", None, with_seed("lenet", 2), {PATHS["lenet"]: metrics(0.90, 0.915)})))
    full = summary(PARAMS, committed, exps, PATHS)
    bare = summary(PARAMS, committed, [], PATHS)
    assert missing_runs(full, bare) == ["lenet seed 2 (s2 (abcdef0))"]
    assert missing_runs(bare, full) == [] and missing_runs({}, bare) == []
    # another recipe committed since: its seeds are not this one's, nothing is lost
    retrained = summary(PARAMS, {**committed, "lenet": metrics(0.95, 0.96)}, [], PATHS)
    assert missing_runs(full, retrained) == []


def test_an_experiment_without_every_view_is_left_out():
    committed = {"lenet": metrics(0.91, 0.92), "alexnet": metrics(0.93, 0.94)}
    old = {"test_views": {"single": {"accuracy": 0.9}}}  # before hflip existed
    exps = experiments(shown(("old", None, with_seed("lenet", 2), {PATHS["lenet"]: old})))
    assert [r["seed"] for r in summary(PARAMS, committed, exps, PATHS)["lenet"]["runs"]] == [1]


@pytest.mark.e2e
def test_in_a_fresh_clone_the_seeds_file_stays_as_committed(tmp_path):
    """A clone has no experiment refs: `python -m tools.seeds` there keeps the committed
    metrics/seeds.json (5 seeds a model), says how to get the experiments, exits 1."""
    from tools import ROOT
    from tools.readme import SEEDS_FILE
    from tools.repo import repo_env, run

    env = repo_env(tmp_path / "home")
    (tmp_path / "home").mkdir()
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(ROOT), str(clone)], tmp_path, env)
    shutil.rmtree(clone / "tools")  # this checkout's tools, on the clone's files
    shutil.copytree(ROOT / "tools", clone / "tools")
    before = (clone / SEEDS_FILE).read_bytes()
    assert len(json.loads(before)["lenet"]["runs"]) > 1
    proc = subprocess.run([sys.executable, "-m", "tools.seeds"], cwd=clone, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "dvc exp pull" in proc.stderr and "left as it was" in proc.stderr
    assert (clone / SEEDS_FILE).read_bytes() == before
