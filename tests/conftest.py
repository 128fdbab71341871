"""Shared fixtures: synthetic IDX data, a loopback HTTP server, a project copy to run in.
Helpers that tests call directly are in tests/support.py."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support import Server, make_workdir, run_stages
from tools.smoke import make_repo, repo_env, tiny_overrides, update_params
from tools.synthetic import write_dataset


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """Four small synthetic IDX .gz files and their content SHA-256s."""
    d = tmp_path_factory.mktemp("synthetic")
    return d, write_dataset(d, n_train=600, n_test=200)


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


@pytest.fixture
def workdir(tmp_path, synthetic) -> Path:
    """A folder with the project's params.yaml (tiny, synthetic) and stages, to run them in."""
    return make_workdir(tmp_path, synthetic)


@pytest.fixture
def prepared(workdir) -> Path:
    """``workdir`` after `download` and `preprocess`."""
    run_stages(workdir, "download", "preprocess")
    return workdir


@pytest.fixture
def dvc_repo(tmp_path, synthetic) -> tuple[Path, dict[str, str]]:
    """A fresh git+DVC repo holding a copy of the project, on tiny synthetic params."""
    src, sha = synthetic
    home = tmp_path / "home"
    home.mkdir()
    repo = make_repo(tmp_path / "repo", repo_env(home))
    env = repo_env(home, src=repo / "src")
    update_params(repo / "params.yaml", tiny_overrides([str(src)], sha))
    return repo, env
