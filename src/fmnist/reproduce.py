"""`fmnist reproduce` (`make reproduce`): re-run the committed training from scratch and
compare it bit for bit.

    fmnist reproduce                                   # the LeNet
    fmnist reproduce --stages train-lenet train-alexnet

Clones the repository's HEAD into a temporary folder, runs the chosen training stages
there with `dvc repro` (and `download` and `preprocess` before them), from nothing, and
compares every output's hash with the committed dvc.lock. Prints `reproduced` per stage,
or what differs: the outputs, and the environment that the committed run recorded in
its timings file (torch, CPU model and ISA flags, threads, device) against the one
here. Exit code 1 on any mismatch.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from fmnist.common import UserError
from fmnist.runtime import NATIVE_BF16_FLAGS
from fmnist.stack import LOCK_FILE, differences

UPSTREAM = ("download", "preprocess")


def outs(lock: dict[str, Any], stage: str) -> dict[str, str]:
    """path -> md5 of a stage's outputs in a dvc.lock."""
    return {o["path"]: o.get("md5", "") for o in lock["stages"].get(stage, {}).get("outs", [])}


def committed(repo: Path, path: str) -> str | None:
    proc = subprocess.run(["git", "show", f"HEAD:{path}"], cwd=repo, capture_output=True,
                          text=True)
    return proc.stdout if proc.returncode == 0 else None


def environment_diff(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    keys = sorted(set(before) | set(after))
    same = {k: before.get(k) == after.get(k) for k in keys}
    same["cpu_flags"] = set(before.get("cpu_flags", [])) == set(after.get("cpu_flags", []))
    return [f"{k}: committed run {before.get(k)!r}, here {after.get(k)!r}"
            for k in keys if not same[k]]


def timings_path(pipeline: dict[str, Any], stage: str) -> str | None:
    """Where a training stage records its timings: its cmd's ``--timings`` in dvc.yaml,
    the one place paths live."""
    words = shlex.split(pipeline.get("stages", {}).get(stage, {}).get("cmd", ""))
    return words[words.index("--timings") + 1] if "--timings" in words[:-1] else None


def clone_env(clone: Path, home: Path) -> dict[str, str]:
    """The clone's stages run the clone's code (HEAD, not this working tree's) with this
    interpreter's dvc and python, and nothing of the user's DVC configuration (a shared
    cache or run-cache would restore results instead of computing them)."""
    home.mkdir(parents=True, exist_ok=True)
    return {**os.environ, "HOME": str(home), "DVC_NO_ANALYTICS": "1",
            "PATH": os.pathsep.join([str(Path(sys.executable).parent),
                                     os.environ.get("PATH", "")]),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(clone / "src"),
                                                        os.environ.get("PYTHONPATH")]))}


def run_in(cmd: list[str], cwd: Path, env: dict[str, str], what: str) -> None:
    try:
        proc = subprocess.run(cmd, cwd=cwd, env=env, text=True)
    except FileNotFoundError:
        raise UserError(f"{cmd[0]} not found: run `make install` first") from None
    if proc.returncode != 0:
        raise UserError(f"`{' '.join(cmd)}` failed {what}")


def explain(clone: Path, stage: str, timings: str | None,
            committed_timings: str | None) -> list[str]:
    if timings is None:
        return []
    here = clone / timings
    then = json.loads(committed_timings) if committed_timings else {}
    now = json.loads(here.read_text()) if here.exists() else {}
    before, after = then.get("environment", {}), now.get("environment", {})
    if not before or "note" in before:
        return ["the committed run recorded no environment to compare with"]
    lines = environment_diff(before, after)
    if then.get("precision") != now.get("precision"):
        lines.append(f"precision: the committed run trained in {then.get('precision')}, "
                     f"this one in {now.get('precision')}")
    native = set(NATIVE_BF16_FLAGS)
    if then.get("precision") == "bf16" and native & set(before.get("cpu_flags", [])) \
            and not native & set(after.get("cpu_flags", [])):
        lines.append("the committed run trained in bf16 on a CPU with native bf16 "
                     "(AVX512-BF16/AMX); this CPU has none (amp: auto trains in fp32 "
                     "here, and bf16 would be emulated with other rounding)")
    lock = clone / LOCK_FILE
    if lock.exists():
        stack = differences(lock)
        lines += [f"installed here unlike {LOCK_FILE} (`make install` installs it "
                  f"exactly): {line}" for line in stack[:20]]
        if len(stack) > 20:
            lines.append(f"... and {len(stack) - 20} more packages")
    return lines or ["the environment matches the committed record and the lock: the code, "
                     "data or params differ, or a kernel is not deterministic here"]


def reproduce(repo: Path, stages: list[str], workdir: Path) -> bool:
    lock_text = committed(repo, "dvc.lock")
    if lock_text is None:
        raise UserError(f"no committed dvc.lock in {repo}'s HEAD: nothing to reproduce")
    lock = yaml.safe_load(lock_text)
    unknown = [s for s in stages if s not in lock.get("stages", {})]
    if unknown:
        raise UserError(f"no stage {unknown[0]!r} in the committed dvc.lock (there: "
                        f"{', '.join(lock.get('stages', {}))})")
    clone = workdir / "clone"
    env = clone_env(clone, workdir / "home")
    run_in(["git", "clone", "-q", str(repo), str(clone)], workdir, env, f"for {repo}")
    print(f"re-running {', '.join(stages)} from scratch in {clone} ...", flush=True)
    t0 = time.perf_counter()
    run_in(["dvc", "repro", "--no-run-cache", *stages], clone, env, f"in the clone {clone}")
    print(f"done in {time.perf_counter() - t0:.0f} s")
    new = yaml.safe_load((clone / "dvc.lock").read_text())
    pipeline = yaml.safe_load((clone / "dvc.yaml").read_text())
    ok = True
    for stage in [*UPSTREAM, *stages]:
        want, got = outs(lock, stage), outs(new, stage)
        if want and want == got:
            print(f"{stage}: reproduced")
            continue
        ok = False
        print(f"{stage}: NOT reproduced")
        for path in sorted(set(want) | set(got)):
            if want.get(path) != got.get(path):
                print(f"  {path}: committed {want.get(path)}, here {got.get(path)}")
        timings = timings_path(pipeline, stage)
        for line in explain(clone, stage, timings,
                            committed(repo, timings) if timings else None):
            print(f"  {line}")
    return ok
