"""The committed recipes over several seeds: each model's test accuracy (both views) for
the committed run and for DVC experiments that changed nothing but that model's seed.

    make seeds                    # queue the experiments (dvc exp run --queue -S grid)
    dvc queue status              # ... and wait for them
    python -m tools.seeds         # write metrics/seeds.json from `dvc exp show`
    python -m tools.readme        # the README's mean ± std and docs/experiments.md's rows

An experiment counts for model NAME when its params equal params.yaml's but for
``train_NAME.seed`` and it succeeded; its figures are its ``metrics/NAME.json``. The
committed run (params.yaml's seed, the committed metrics) is the first of each list.
Experiments of the last commits count (``dvc exp show -n 30``): the seeds may have run
before a later commit that changed no stage's outputs; each run names its commit.

The file is never shrunk: where a run it holds is not among what `dvc exp show` lists
here (a fresh clone has no experiment refs), it is left as it was and the tool exits 1,
saying how to get them (`dvc exp pull`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from fmnist.common import UserError
from fmnist.models import MODELS
from fmnist.params import PARAMS_FILE, read_params
from fmnist.presets import flatten
from fmnist.views import VIEWS
from tools import ROOT, run_tool
from tools.readme import SEEDS_FILE
from tools.repo import dvc_json, metrics_paths


def scores(metrics: dict[str, Any]) -> dict[str, float]:
    return {view: metrics["test_views"][view]["accuracy"] for view in VIEWS}


def experiments(shown: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every experiment of ``dvc exp show --json``: name, commit, state (its executor's:
    queued, running, success, failed; None for one that ran in the workspace), params
    and metrics."""
    out = []
    for rev in shown:
        for exp in rev.get("experiments") or []:
            for ex in exp.get("revs", []):
                data = ex.get("data") or {}
                out.append({
                    "name": ex.get("name") or ex.get("rev"),
                    "commit": rev.get("rev"),
                    "state": (exp.get("executor") or {}).get("state"),
                    "params": (data.get("params", {}).get(PARAMS_FILE) or {}).get("data", {}),
                    "metrics": {k: (v or {}).get("data") or {}
                                for k, v in (data.get("metrics") or {}).items()}})
    return out


def summary(params: dict[str, Any], committed: dict[str, dict[str, Any]],
            exps: list[dict[str, Any]], paths: dict[str, str]) -> dict[str, Any]:
    """model -> its runs (committed first, then each seed once) and the mean and sample
    standard deviation of each view's test accuracy."""
    base = flatten(params)
    out = {}
    for name, spec in MODELS.items():
        key = f"{spec.section}.seed"
        runs = [{"seed": base[key], "run": "committed", **scores(committed[name])}]
        for e in sorted(exps, key=lambda e: e["name"]):
            theirs = flatten(e["params"])
            seed = theirs.get(key)
            if e["state"] not in ("success", None) or seed in {r["seed"] for r in runs} or \
                    {k: v for k, v in theirs.items() if k != key} != \
                    {k: v for k, v in base.items() if k != key}:
                continue
            m = e["metrics"].get(paths[name])
            if m and set(VIEWS) <= set(m.get("test_views") or {}):
                runs.append({"seed": seed, "run": f"{e['name']} ({e['commit'][:7]})",
                             **scores(m)})
        runs = runs[:1] + sorted(runs[1:], key=lambda r: r["seed"])
        stats = {view: {"mean": statistics.fmean(r[view] for r in runs),
                        "std": statistics.stdev(r[view] for r in runs) if len(runs) > 1
                        else 0.0} for view in VIEWS}
        out[name] = {"runs": runs, **stats}
    return out


def missing_runs(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The runs ``old`` (the seeds file as it is) holds that ``new`` lacks, by model
    and seed, for the models whose committed run is the same in both: where the
    committed run changed (another recipe), the old seeds are another recipe's and
    rewriting them loses nothing of this one."""
    def committed(entry: Any) -> Any:
        runs = entry.get("runs") if isinstance(entry, dict) else None
        return runs[0] if isinstance(runs, list) and runs else None

    return [f"{name} seed {run.get('seed')} ({run.get('run')})"
            for name, entry in old.items()
            if committed(entry) is not None and committed(entry) == committed(new.get(name))
            for run in entry["runs"] if isinstance(run, dict)
            and run.get("seed") not in {r["seed"] for r in new[name]["runs"]}]


def read_seeds(path: Path) -> dict[str, Any]:
    try:
        old = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: unreadable ({exc}); restore it with `git checkout -- "
                        f"{path}` or remove it") from None
    return old if isinstance(old, dict) else {}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.seeds",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / SEEDS_FILE)
    parser.add_argument("--commits", type=int, default=30,
                        help="experiments of this many commits back from HEAD count")
    args = parser.parse_args()
    paths = metrics_paths()
    committed = {}
    for name, path in paths.items():
        try:
            committed[name] = json.loads((ROOT / path).read_text())
        except (OSError, ValueError) as exc:
            raise UserError(f"{path}: the committed run's metrics are unreadable ({exc}): "
                            "`dvc pull` or `dvc repro evaluate`") from None
    shown = dvc_json(["exp", "show", "--json", "-n", str(args.commits)], ROOT, "the experiments")
    result = summary(read_params(ROOT / PARAMS_FILE), committed, experiments(shown), paths)
    lost = missing_runs(read_seeds(args.out), result)
    if lost:
        print(f"error: {args.out} holds runs that `dvc exp show` does not list here: "
              f"{', '.join(lost[:4])}{' ...' if len(lost) > 4 else ''}; get the "
              "experiments with `dvc exp pull origin --all-commits` (or `git fetch origin "
              "'refs/exps/*:refs/exps/*'`) and run again; the file is left as it was",
              file=sys.stderr)
        return 1
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for name, s in result.items():
        figures = ", ".join(f"{v} {s[v]['mean']:.4f} ± {s[v]['std']:.4f}" for v in VIEWS)
        print(f"{name}: {len(s['runs'])} seeds, {figures}")
    return 0


if __name__ == "__main__":
    run_tool(main)
