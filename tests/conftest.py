"""Shared fixtures: synthetic IDX data, a loopback HTTP server, a project copy to run in."""

from __future__ import annotations

import hashlib
import http.server
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
import yaml

from fmnist import train as train_module
from fmnist.params import TrainParams, load_section
from fmnist.smoke import ROOT, make_repo, repo_env, tiny_overrides, update_params
from fmnist.synthetic import write_dataset

PY = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """Four small synthetic IDX .gz files and their content SHA-256s."""
    d = tmp_path_factory.mktemp("synthetic")
    return d, write_dataset(d, n_train=600, n_test=200)


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


@pytest.fixture
def http_server(tmp_path) -> Iterator[Callable[[Path], Server]]:
    servers: list[Server] = []

    def start(root: Path) -> Server:
        s = Server(root).__enter__()
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.__exit__(None, None, None)


def make_workdir(path: Path, synthetic: tuple[Path, dict[str, str]]) -> Path:
    """Copy the project's params.yaml (made tiny, on synthetic data) and stages to ``path``."""
    src, sha = synthetic
    for name in ("params.yaml", "stages"):
        p = ROOT / name
        (shutil.copytree if p.is_dir() else shutil.copy2)(p, path / name)
    update_params(path / "params.yaml", tiny_overrides([str(src)], sha))
    return path


def run_stages(cwd: Path, *stages: str) -> None:
    """Run stage scripts in order (e.g. "download", "train lenet"); each must succeed."""
    for stage in stages:
        script, *args = stage.split()
        proc = run_stage(cwd, f"stages/{script}.py", *args)
        assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.fixture
def workdir(tmp_path, synthetic) -> Path:
    """A folder with the project's params.yaml (tiny, synthetic) and stages, to run them in."""
    return make_workdir(tmp_path, synthetic)


@pytest.fixture
def prepared(workdir) -> Path:
    """``workdir`` after `download` and `preprocess`."""
    run_stages(workdir, "download", "preprocess")
    return workdir


def set_params(path: Path, updates: dict) -> None:
    update_params(path / "params.yaml" if path.is_dir() else path, updates)


def read_params(path: Path) -> dict:
    return yaml.safe_load((path / "params.yaml").read_text())


def run_stage(cwd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([PY, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture
def dvc_repo(tmp_path, synthetic) -> tuple[Path, dict[str, str]]:
    """A fresh git+DVC repo holding a copy of the project, on tiny synthetic params."""
    src, sha = synthetic
    home = tmp_path / "home"
    home.mkdir()
    env = repo_env(home)
    repo = make_repo(tmp_path / "repo", env)
    update_params(repo / "params.yaml", tiny_overrides([str(src)], sha))
    return repo, env


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def state_hash(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 of a state dict's names and tensors (CPU tensors)."""
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].contiguous().numpy().tobytes())
    return h.hexdigest()


def weights_hash(path: Path) -> str:
    """``state_hash`` of a saved state dict (a plain load: it must be on the CPU)."""
    return state_hash(torch.load(path, weights_only=True))


def run_train(wd: Path, name: str, tag: str, **updates) -> dict:
    """Train ``name`` in-process from ``wd``'s params, with ``updates``, into ``wd``/tag."""
    params = load_section(f"train_{name}", TrainParams, wd / "params.yaml")
    params = params.model_copy(update=updates)
    return train_module.train(name, params, wd / "data/prepared", wd / tag / "model",
                              wd / tag / "state.pt", wd / tag / "curves.tsv")


def run_train_interrupted(wd: Path, name: str, tag: str, **updates) -> dict:
    """``run_train``, stopped as a Ctrl-C would stop it once it has saved its first
    epoch's resume state; returns that state."""
    save = train_module.save_torch

    def save_then_die(obj, path):
        save(obj, path)
        if Path(path).name == "state.pt":
            raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train_module, "save_torch", save_then_die)
        with pytest.raises(KeyboardInterrupt):
            run_train(wd, name, tag, **updates)
    return torch.load(wd / tag / "state.pt", weights_only=True)
