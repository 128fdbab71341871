"""`make check-lock`: does the committed dvc.lock hold the results of this code and these
params? No data, no remote and no training needed: seconds.

    python -m tools.check_lock          # exit 0: up to date; 1: stale, with each reason

A stage is stale when a code file it runs, a params key it lists, or its command differs
from what dvc.lock recorded, or when a result file kept in git (a metrics JSON, the
report) is not the one dvc.lock recorded; every stage downstream of a stale one is stale
too, since its inputs will change. Outputs or data that are merely absent (a fresh
clone without `dvc pull`) are not staleness, and run-time settings (the `runtime`
section, the download's timeout/retries/backoff) are listed by no stage, so they never
count.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fmnist.dvcfiles import check_files, load_yaml
from fmnist.params import read_params
from fmnist.presets import flatten
from tools import ROOT, run_tool
from tools.repo import dvc_json, stage_paths

# What `dvc status` says of a file that is merely not here (not pulled, not produced)
ABSENT = ("deleted", "not in cache")


def dvc_status(repo: Path) -> dict:
    return dvc_json(["status", "--json"], repo, "check-lock")


def leaves(tree: object, prefix: str) -> dict[str, object]:
    """``tree``'s values by dotted key under ``prefix`` (``fmnist.presets.flatten``)."""
    return flatten(tree, prefix + ".") if isinstance(tree, dict) and tree else {prefix: tree}


def changed_keys(repo: Path, stage: str, params_file: str, entry: str) -> list[str]:
    """The keys under a params entry (a key, or a whole section) whose values differ
    from what dvc.lock recorded for ``stage``."""
    lock = load_yaml((repo / "dvc.lock").read_text(), "dvc.lock")["stages"].get(stage, {})
    then = lock.get("params", {}).get(params_file, {})
    now = read_params(repo / params_file)  # YAML 1.2, as DVC reads it
    for part in entry.split("."):
        now = now.get(part, {}) if isinstance(now, dict) else {}
    old, new = leaves(then.get(entry), entry), leaves(now, entry)
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k)) or [entry]


def reasons(status: dict, repo: Path = ROOT) -> dict[str, list[str]]:
    """stage -> why it is stale, from `dvc status --json` (absent files left out)."""
    out: dict[str, list[str]] = {}
    for stage, changes in status.items():
        name = stage.split(":")[-1]
        why = []
        for change in changes:
            if not isinstance(change, dict):  # "changed command", "always changed"
                why.append("its command changed" if change == "changed command"
                           else str(change))
                continue
            for kind, entries in change.items():
                if kind == "changed command":
                    why.append("its command changed")
                    continue
                for path, what in (entries or {}).items():
                    if isinstance(what, dict):  # a params file: key -> modified|new|deleted
                        why += [f"param {k} {how}" for key, how in what.items()
                                for k in changed_keys(repo, name, path, key)]
                    elif what in ABSENT:
                        continue
                    elif kind == "changed deps":
                        why.append(f"{path} {what}")
                    elif kind == "changed outs":
                        why.append(f"{path} {what} (not the result dvc.lock records)")
        if why:
            out[name] = why
    return out


def downstream(repo: Path) -> dict[str, set[str]]:
    """stage -> the stages that read one of its outputs, directly or not."""
    stages = stage_paths(repo)  # stage -> (deps, outs)
    reads = {n: set() for n in stages}
    for n, (deps, _) in stages.items():
        for dep in deps:
            for m, (_, produced) in stages.items():
                if any(dep == o or dep.startswith(o.rstrip("/") + "/") for o in produced):
                    reads[m].add(n)
    closure = {}
    for n in stages:
        seen, todo = set(), [n]
        while todo:
            for nxt in reads[todo.pop()] - seen:
                seen.add(nxt)
                todo.append(nxt)
        closure[n] = seen
    return closure


def check(repo: Path = ROOT) -> tuple[list[str], list[str]]:
    """(stale stages in pipeline order, one line per reason)."""
    check_files(repo)  # before DVC's reader sees a hostile dvc.yaml or dvc.lock
    why = reasons(dvc_status(repo), repo)
    after = downstream(repo)
    order = list(after)
    stale = set(why)
    for stage in why:
        stale |= after[stage]
    lines = []
    for stage in order:
        if stage in why:
            lines += [f"  {stage}: {r}" for r in why[stage]]
        elif stage in stale:
            sources = sorted(s for s in why if stage in after[s])
            lines.append(f"  {stage}: downstream of {', '.join(sources)}")
    return [s for s in order if s in stale], lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", type=Path, default=ROOT)
    args = parser.parse_args()
    stale, lines = check(args.repo)
    if not stale:
        print("dvc.lock is up to date: the committed results are this code's and params'")
        return
    print(f"results are stale: re-run {', '.join(f'`{s}`' for s in stale)} "
          "(`dvc repro`, then commit dvc.lock and metrics/)")
    print("\n".join(lines))
    sys.exit(1)


if __name__ == "__main__":
    run_tool(main)
