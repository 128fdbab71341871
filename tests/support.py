"""Helpers the tests share (fixtures are in conftest.py)."""

from __future__ import annotations

import hashlib
import http.server
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import torch

from fmnist import train as train_module
from fmnist.models import spec
from fmnist.runtime import setup_runtime
from fmnist.train import RunPaths
from tools.repo import copy_project, run, stage_argv, update_params

PY = sys.executable


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A static file server on 127.0.0.1 that can be told to misbehave per path."""

    def __init__(self, root: Path):
        self.root = root
        self.fail: dict[str, list[int]] = {}  # file name -> statuses to answer first
        self.hits: list[str] = []
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *a, **kw):
                super().__init__(*a, directory=str(root), **kw)

            def do_GET(self):  # noqa: N802
                name = self.path.rsplit("/", 1)[-1]
                server.hits.append(name)
                pending = server.fail.get(name)
                if pending:
                    self.send_error(pending.pop(0))
                    return
                super().do_GET()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


def recompressed(src: Path, dst: Path, level: int, mtime: int) -> Path:
    """``src``'s IDX .gz files re-compressed as another mirror might: another level, the
    file's name and a modification time in the gzip header (Debian's copy differs so
    from the official files)."""
    import gzip

    from fmnist.params import RAW_FILES

    dst.mkdir()
    for name in RAW_FILES:
        content = gzip.decompress((src / name).read_bytes())
        with open(dst / name, "wb") as raw, gzip.GzipFile(
                filename=name.removesuffix(".gz"), mode="wb", fileobj=raw,
                compresslevel=level, mtime=mtime) as f:
            f.write(content)
    return dst


def make_workdir(path: Path, synthetic: tuple[Path, dict[str, str]]) -> Path:
    """Copy the project's params.yaml (made tiny, on synthetic data) and stages to ``path``."""
    src, sha = synthetic
    copy_project(path, files=("params.yaml", "stages"))
    update_params(path / "params.yaml", tiny_overrides([str(src)], sha))
    return path


def run_script(cwd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run a Python script in ``cwd``, capturing its output."""
    return subprocess.run([PY, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def run_stage(cwd: Path, stage: str, *extra: str,
              timeout: float = 300) -> subprocess.CompletedProcess:
    """Run a stage's command as dvc.yaml gives it (with ``extra`` arguments) in ``cwd``."""
    return subprocess.run([*stage_argv(stage), *extra], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def run_stages(cwd: Path, *stages: str) -> None:
    """Run stages by their dvc.yaml commands, in order; each must succeed."""
    for stage in stages:
        proc = run_stage(cwd, stage)
        assert proc.returncode == 0, proc.stdout + proc.stderr


def set_params(path: Path, updates: dict) -> None:
    update_params(path / "params.yaml" if path.is_dir() else path, updates)


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str,
                          prefix: str = "error: ") -> str:
    """A user error: exit code 2, one line on stderr, no traceback, naming ``needles``."""
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(prefix), lines[0]
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def state_hash(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 of a state dict's names and tensors (CPU tensors)."""
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def weights_hash(path: Path) -> str:
    """``state_hash`` of a saved state dict (a plain load: it must be on the CPU)."""
    return state_hash(torch.load(path, weights_only=True))


def tag_paths(wd: Path, tag: str) -> RunPaths:
    return RunPaths(wd / "data/prepared", wd / tag / "model", wd / tag / "curves.tsv",
                    wd / tag / "state.pt", wd / tag / "timings.json")


def run_train(wd: Path, name: str, tag: str, resume: bool = True, **updates) -> dict:
    """Train ``name`` in-process from ``wd``'s params, with ``updates``, into ``wd``/tag."""
    params = spec(name).load_params(wd / "params.yaml")
    params = type(params).model_validate({**params.model_dump(), **updates})
    return train_module.train(name, params, tag_paths(wd, tag),
                              setup_runtime(params, spec(name).section), resume=resume)


def run_train_interrupted(wd: Path, name: str, tag: str, **updates) -> dict:
    """``run_train``, stopped as a Ctrl-C would stop it once it has saved its first
    epoch's resume state; returns that state."""
    import fmnist.resume as resume_module

    save = resume_module.save_torch

    def save_then_die(obj, path):
        save(obj, path)
        if Path(path).name == "state.pt":
            raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(resume_module, "save_torch", save_then_die)
        with pytest.raises(KeyboardInterrupt):
            run_train(wd, name, tag, **updates)
    return torch.load(wd / tag / "state.pt", weights_only=True)


# ---------------------------------------------------------------- dvc in a temporary repo


def ran(stdout: str) -> set[str]:
    """The stages a `dvc repro` (or `dvc exp run`) ran, from its output."""
    return {line.split("'")[1] for line in stdout.splitlines()
            if line.startswith("Running stage '")}


def output_hashes(repo: Path) -> dict[str, str]:
    """SHA-256 of every file under the pipeline's output folders."""
    out = {}
    for top in ("data", "models", "metrics", "dist"):
        for p in sorted((repo / top).rglob("*")):
            if p.is_file() and p.name != ".gitignore":
                out[str(p.relative_to(repo))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def commit(repo: Path, env: dict[str, str], msg: str) -> None:
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-qm", msg], repo, env)


def copy_workdir(template: Path, dst: Path) -> Path:
    """A copy of a work folder that a session fixture built."""
    shutil.copytree(template, dst, symlinks=True)
    return dst


def copy_repo(template: Path, dst: Path) -> Path:
    """A copy of a git+DVC repo, cache included; without ``.dvc/tmp``, DVC's state of
    that folder (locks, hashes keyed by inode), which the copy builds anew."""
    shutil.copytree(template, dst, symlinks=True,
                    ignore=lambda d, names: ["tmp"] if Path(d).name == ".dvc" else [])
    return dst
