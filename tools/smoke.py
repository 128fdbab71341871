"""Run the whole pipeline on tiny synthetic data in a temporary copy of the project.

This is CI's pipeline validation (`make smoke`, called by .ci/run) and the toolbox the
end-to-end tests share: copy the project into a fresh git+DVC repo, point params.yaml
at synthetic IDX files with tiny models, run real `dvc` commands there.
"""

from __future__ import annotations

import argparse
import copy
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from tools import ROOT
from tools.synthetic import write_dataset

PROJECT_FILES = ("dvc.yaml", "params.yaml", "stages", "src", ".dvcignore")



def tiny_overrides(sources: list[str], sha256: dict[str, str]) -> dict[str, Any]:
    """Params that run every stage in seconds: synthetic sources, small widths, 1 epoch."""
    train = {"epochs": 1, "batch_size": 32, "threads": 1, "eval_batch_size": 256,
             "augment": {"crop_padding": 2, "hflip": True}, "device": "cpu"}
    return {
        "download": {"sources": sources, "sha256": sha256, "timeout": 5, "retries": 0},
        "preprocess": {"val_size": 100},
        "train_lenet": dict(train),
        "train_alexnet": {**train, "arch": {"channels": [4, 8, 8, 8, 8], "fc": 32}},
        "evaluate": {"batch_size": 256, "misclassified": 9, "device": "cpu"},
    }


def merge(base: dict[str, Any], updates: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in updates.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def update_params(path: str | Path, updates: dict[str, Any]) -> None:
    path = Path(path)
    data = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump(merge(data, updates), sort_keys=False))


def repo_env(home: str | Path, src: str | Path | None = None) -> dict[str, str]:
    """An environment for git and dvc that assumes nothing of the caller's home.

    With ``src``, the stages import the package from there (a copy's own code) rather
    than from wherever fmnist is installed.
    """
    env = dict(os.environ)
    env.update({
        "HOME": str(home),
        "GIT_AUTHOR_NAME": "Pipeline Test", "GIT_AUTHOR_EMAIL": "test@example.invalid",
        "GIT_COMMITTER_NAME": "Pipeline Test", "GIT_COMMITTER_EMAIL": "test@example.invalid",
        "GIT_CONFIG_NOSYSTEM": "1",
        "DVC_NO_ANALYTICS": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        "PYTHONUNBUFFERED": "1",
    })
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src),
                                                          env.get("PYTHONPATH", "")]))
    env.pop("GIT_DIR", None)
    env.pop("GIT_WORK_TREE", None)
    return env


def run(cmd: list[str], cwd: str | Path, env: dict[str, str],
        check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, cwd=cwd, env=env, text=True, capture_output=True)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n"
                           f"{proc.stdout}\n{proc.stderr}")
    return proc


def make_repo(dst: str | Path, env: dict[str, str], root: Path = ROOT) -> Path:
    """Copy the project's pipeline files into ``dst`` and make it a fresh git+DVC repo."""
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        src = root / name
        if src.is_dir():
            shutil.copytree(src, dst / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        elif src.exists():
            shutil.copy2(src, dst / name)
    shutil.copy2(root / ".gitignore", dst / ".gitignore")
    run(["git", "init", "-q", "-b", "main"], dst, env)
    run(["dvc", "init", "-q"], dst, env)
    run(["dvc", "config", "core.analytics", "false"], dst, env)
    return dst


def stage_paths(repo: Path) -> dict[str, tuple[list[str], list[str]]]:
    """Each stage's declared deps and outs (plots and metrics included), from dvc.yaml."""
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    result = {}
    for name, st in stages.items():
        outs = []
        for key in ("outs", "metrics", "plots"):
            for item in st.get(key, []):
                outs.append(next(iter(item)) if isinstance(item, dict) else item)
        result[name] = (list(st.get("deps", [])), outs)
    return result


def validate_pipeline(repo: Path, env: dict[str, str]) -> list[str]:
    """Problems with a finished pipeline: a dag that fails, or a missing dep or out."""
    problems = []
    if run(["dvc", "dag"], repo, env, check=False).returncode != 0:
        problems.append("`dvc dag` failed")
    for stage, (deps, outs) in stage_paths(repo).items():
        problems += [f"{stage}: dep {p} is missing" for p in deps if not (repo / p).exists()]
        problems += [f"{stage}: out {p} was not written" for p in outs if not (repo / p).exists()]
    status = run(["dvc", "status", "--quiet"], repo, env, check=False)
    if status.returncode != 0:
        problems.append(f"`dvc status` is not clean after repro: {status.stdout.strip()}")
    return problems


def smoke(workdir: str | Path) -> Path:
    workdir = Path(workdir)
    env = repo_env(workdir / "home")
    (workdir / "home").mkdir(parents=True, exist_ok=True)
    sha = write_dataset(workdir / "synthetic", n_train=600, n_test=200)
    repo = make_repo(workdir / "repo", env)
    update_params(repo / "params.yaml", tiny_overrides([str(workdir / "synthetic")], sha))
    t0 = time.perf_counter()
    proc = run(["dvc", "repro"], repo, env)
    print(proc.stdout[-3000:])
    problems = validate_pipeline(repo, env)
    if problems:
        raise SystemExit("pipeline validation failed:\n  " + "\n  ".join(problems))
    print(f"smoke run of all {len(stage_paths(repo))} stages passed in "
          f"{time.perf_counter() - t0:.1f} s in {repo}")
    return repo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keep", help="run in this folder and keep it")
    args = parser.parse_args()
    if args.keep:
        smoke(args.keep)
    else:
        with tempfile.TemporaryDirectory(prefix="fmnist-smoke-") as tmp:
            smoke(tmp)


if __name__ == "__main__":
    main()
