"""A temporary git+DVC repository holding a copy of the project, real `dvc` commands run
there, and the stages' commands read from dvc.yaml: the harness of the end-to-end
tests, also used by the benchmark and the docs generator.

Everything runs with its own HOME and git identity (``repo_env``), so nothing depends
on the caller's home folder or git configuration.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from fmnist.common import option, stage_command
from tools import ROOT

PROJECT_FILES = ("dvc.yaml", "params.yaml", "stages", "src", ".dvcignore", ".gitignore")


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


def run(cmd: list[str], cwd: str | Path, env: dict[str, str] | None = None,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, cwd=cwd, env=env, text=True, capture_output=True)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n"
                           f"{proc.stdout}\n{proc.stderr}")
    return proc


def copy_project(dst: str | Path, root: Path = ROOT,
                 files: tuple[str, ...] = PROJECT_FILES) -> Path:
    """Copy the project's pipeline files (or ``files`` of them) into ``dst``."""
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    for name in files:
        src = root / name
        if src.is_dir():
            shutil.copytree(src, dst / name, symlinks=True,
                            ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        elif src.exists():
            shutil.copy2(src, dst / name)
    return dst


def make_repo(dst: str | Path, env: dict[str, str], root: Path = ROOT) -> Path:
    """Copy the project's pipeline files into ``dst`` and make it a fresh git+DVC repo."""
    dst = copy_project(dst, root)
    run(["git", "init", "-q", "-b", "main"], dst, env)
    run(["dvc", "init", "-q"], dst, env)
    run(["dvc", "config", "core.analytics", "false"], dst, env)
    return dst


def pipeline(root: Path = ROOT) -> dict[str, Any]:
    """``root``/dvc.yaml, parsed."""
    return yaml.safe_load((root / "dvc.yaml").read_text())


def stages(root: Path = ROOT) -> dict[str, dict[str, Any]]:
    return pipeline(root)["stages"]


def stage_argv(stage: str, root: Path = ROOT) -> list[str]:
    """A stage's ``cmd`` from dvc.yaml as an argument list, run by this interpreter."""
    argv = stage_command(pipeline(root), stage)
    if not argv:
        raise KeyError(f"dvc.yaml has no stage {stage!r} with a cmd")
    return [sys.executable, *argv[1:]] if argv[0] == "python" else argv


def metrics_paths(root: Path = ROOT) -> dict[str, str]:
    """model name -> its metrics JSON, as evaluate's cmd in dvc.yaml writes them."""
    evaluate = stage_argv("evaluate", root)
    return dict(zip(option(evaluate, "--models"), option(evaluate, "--metrics"), strict=True))


def stage_paths(root: Path = ROOT) -> dict[str, tuple[list[str], list[str]]]:
    """Each stage's declared deps and outs (plots and metrics included), from dvc.yaml."""
    result = {}
    for name, st in stages(root).items():
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


def dvc_json(args: list[str], cwd: Path, what: str) -> dict:
    """``dvc ARGS`` (this interpreter's dvc, no analytics) run for its JSON on stdout;
    a failure is one line naming ``what``."""
    dvc = shutil.which("dvc", path=os.pathsep.join([str(Path(sys.executable).parent),
                                                      os.environ.get("PATH", "")]))
    proc = subprocess.run([dvc or "dvc", *args], cwd=cwd, text=True, capture_output=True,
                          env={**os.environ, "DVC_NO_ANALYTICS": "1"})
    if proc.returncode != 0:
        raise SystemExit(f"{what}: `dvc {' '.join(args[:2])}` failed: {proc.stderr.strip()}")
    return json.loads(proc.stdout or "{}")
