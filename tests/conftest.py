"""Shared fixtures: synthetic IDX data, a loopback HTTP server, a project copy to run in.
Helpers that tests call directly are in tests/support.py.

What costs seconds is built once per test run (session scope) and copied per test: the
synthetic data, the prepared store, a trained and evaluated work folder."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support import Server, make_workdir, run_stages, tiny_overrides
from tests.synthetic import write_dataset
from tools.repo import make_repo, repo_env, update_params

# Fixtures that train, run stage subprocesses or start servers: a test that uses one is
# in the slower tier (`e2e`), so `pytest -m 'not e2e'` stays under a minute.
SLOW_FIXTURES = {"prepared", "evaluated", "dvc_repo", "http_server"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.e2e)


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
    return make_workdir(tmp_path / "wd", synthetic)


def _copy(template: Path, dst: Path) -> Path:
    shutil.copytree(template, dst, symlinks=True)
    return dst


@pytest.fixture(scope="session")
def prepared_template(tmp_path_factory, synthetic) -> Path:
    wd = make_workdir(tmp_path_factory.mktemp("prepared"), synthetic)
    run_stages(wd, "download", "preprocess")
    return wd


@pytest.fixture
def prepared(prepared_template, tmp_path) -> Path:
    """A work folder after `download` and `preprocess` (a copy of one built per run)."""
    return _copy(prepared_template, tmp_path / "wd")


@pytest.fixture(scope="session")
def evaluated_template(prepared_template, tmp_path_factory) -> Path:
    wd = _copy(prepared_template, tmp_path_factory.mktemp("evaluated") / "wd")
    run_stages(wd, "train-lenet", "train-alexnet", "evaluate")
    return wd


@pytest.fixture
def evaluated(evaluated_template, tmp_path) -> Path:
    """A work folder after all five stages (a copy of one built per run)."""
    return _copy(evaluated_template, tmp_path / "wd")


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
