"""`make reproduce`: re-run the committed training from scratch and compare it bit for bit.

    python -m tools.reproduce                                   # the LeNet
    python -m tools.reproduce --stages train-lenet train-alexnet

Clones the repository's HEAD into a temporary folder, runs the chosen training stages
there with `dvc repro` (and `download` and `preprocess` before them), from nothing, and
compares every output's hash with the committed dvc.lock. Prints `reproduced` per stage,
or what differs: the outputs, and the environment that the committed run recorded in
metrics/timings/NAME.json (torch, CPU model and ISA flags, threads, device) against the
one here. Exit code 1 on any mismatch.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from tools import ROOT
from tools.smoke import repo_env, run

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
    return [f"{k}: committed run {before.get(k)!r}, here {after.get(k)!r}"
            for k in keys if before.get(k) != after.get(k)]


def explain(clone: Path, stage: str, committed_timings: str | None) -> list[str]:
    name = stage.removeprefix("train-")
    if not stage.startswith("train-"):
        return []
    here = clone / "metrics" / "timings" / f"{name}.json"
    then = json.loads(committed_timings) if committed_timings else {}
    now = json.loads(here.read_text()) if here.exists() else {}
    before, after = then.get("environment", {}), now.get("environment", {})
    if not before or "note" in before:
        return ["the committed run recorded no environment to compare with"]
    lines = environment_diff(before, after)
    if then.get("precision") != now.get("precision"):
        lines.append(f"precision: the committed run trained in {then.get('precision')}, "
                     f"this one in {now.get('precision')}")
    native = {"avx512_bf16", "amx_bf16"}
    if then.get("precision") == "bf16" and native & set(before.get("cpu_flags", [])) \
            and not native & set(after.get("cpu_flags", [])):
        lines.append("the committed run trained in bf16 on a CPU with native bf16 "
                     "(AVX512-BF16/AMX); this CPU has none (amp: auto trains in fp32 "
                     "here, and bf16 would be emulated with other rounding)")
    return lines or ["the environment matches the committed record: the code, data or "
                     "params differ, or a kernel is not deterministic here"]


def reproduce(repo: Path, stages: list[str], workdir: Path) -> bool:
    lock_text = committed(repo, "dvc.lock")
    if lock_text is None:
        raise SystemExit("no committed dvc.lock in HEAD: nothing to reproduce")
    lock = yaml.safe_load(lock_text)
    clone = workdir / "clone"
    (workdir / "home").mkdir(parents=True, exist_ok=True)
    env = repo_env(workdir / "home", src=clone / "src")
    run(["git", "clone", "-q", str(repo), str(clone)], workdir, env)
    print(f"re-running {', '.join(stages)} from scratch in {clone} ...", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(["dvc", "repro", *stages], cwd=clone, env=env, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"`dvc repro {' '.join(stages)}` failed in the clone")
    print(f"done in {time.perf_counter() - t0:.0f} s")
    new = yaml.safe_load((clone / "dvc.lock").read_text())
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
        name = stage.removeprefix("train-")
        for line in explain(clone, stage, committed(repo, f"metrics/timings/{name}.json")):
            print(f"  {line}")
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", nargs="+", default=["train-lenet"])
    parser.add_argument("--repo", type=Path, default=ROOT)
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it")
    args = parser.parse_args()
    if args.keep:
        shutil.rmtree(args.keep, ignore_errors=True)
        ok = reproduce(args.repo.resolve(), args.stages, args.keep)
    else:
        with tempfile.TemporaryDirectory(prefix="fmnist-reproduce-") as tmp:
            ok = reproduce(args.repo.resolve(), args.stages, Path(tmp))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
