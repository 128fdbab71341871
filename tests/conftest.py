"""Shared fixtures: synthetic IDX data, a loopback HTTP server, project copies to run in.
Helpers that tests call directly are in tests/support.py.

What costs seconds is built once per test run, and once for all pytest-xdist workers:
a git+DVC repo whose whole pipeline ran under `dvc repro` and was committed
(`committed_template`). Every other pipeline state is derived from it, not run again:
work folders after `preprocess` (`prepared`), after `evaluate` (`evaluated`) and after
`package` (`packaged_template`), each copied per test."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support import (
    Server,
    commit,
    copy_repo,
    copy_workdir,
    make_workdir,
    output_hashes,
    tiny_overrides,
)
from tests.synthetic import write_dataset
from tools.repo import copy_project, make_repo, repo_env, run, update_params

# Fixtures that train, run stage subprocesses or start servers: a test that uses one is
# in the slower tier (`e2e`), so `pytest -m 'not e2e'` stays under a minute.
SLOW_FIXTURES = {"prepared", "prepared_template", "evaluated", "evaluated_template",
                 "packaged_template", "dvc_repo", "committed_repo", "committed_template",
                 "http_server"}


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


def derive_workdir(committed: Path, dst: Path, outputs: tuple[str, ...]) -> Path:
    """A work folder (params.yaml and stages, as ``make_workdir`` makes one) holding the
    committed repo's ``outputs``: the same params and code, so the same bytes as running
    those stages again in the folder."""
    copy_project(dst, committed, files=("params.yaml", "stages", *outputs))
    for ignore in dst.rglob(".gitignore"):  # DVC's, for git: a work folder has no git
        ignore.unlink()
    return dst


@pytest.fixture(scope="session")
def prepared_template(committed_template, tmp_path_factory) -> Path:
    return derive_workdir(committed_template[0], tmp_path_factory.mktemp("prepared") / "wd",
                          ("data",))


@pytest.fixture
def prepared(prepared_template, tmp_path) -> Path:
    """A work folder after `download` and `preprocess` (a copy of one built per run)."""
    return copy_workdir(prepared_template, tmp_path / "wd")


@pytest.fixture(scope="session")
def evaluated_template(committed_template, tmp_path_factory) -> Path:
    return derive_workdir(committed_template[0], tmp_path_factory.mktemp("evaluated") / "wd",
                          ("data", "models", "metrics", "state"))


@pytest.fixture
def evaluated(evaluated_template, tmp_path) -> Path:
    """A work folder after the training and evaluate stages (a copy of one built per run)."""
    return copy_workdir(evaluated_template, tmp_path / "wd")


@pytest.fixture(scope="session")
def packaged_template(committed_template, tmp_path_factory) -> Path:
    """A work folder after every stage, `package` included: read it, do not write to it."""
    return derive_workdir(committed_template[0], tmp_path_factory.mktemp("packaged") / "wd",
                          ("data", "models", "metrics", "state", "dist"))


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


@pytest.fixture(scope="session")
def committed_template(tmp_path_factory, synthetic) -> tuple[Path, dict[str, str], str]:
    """A fresh git+DVC repo after `dvc repro` of every stage, committed: the repo, its
    outputs' hashes, and what `dvc repro` printed.

    Built once per test run even under pytest-xdist: the first worker that needs it
    builds it in the folder all workers share, under a lock (xdist's own recipe for a
    session fixture); the others wait for it and use it."""
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # one folder per worker below it
    tmp, record = shared / "committed", shared / "committed.json"
    with FileLock(str(shared / "committed.lock")):
        if not record.exists():
            src, sha = synthetic
            (tmp / "home").mkdir(parents=True)
            repo = make_repo(tmp / "repo", repo_env(tmp / "home"))
            update_params(repo / "params.yaml", tiny_overrides([str(src)], sha))
            env = repo_env(tmp / "home", src=repo / "src")
            stdout = run(["dvc", "repro"], repo, env).stdout
            commit(repo, env, "pipeline run")
            record.write_text(json.dumps([output_hashes(repo), stdout]))
    hashes, stdout = json.loads(record.read_text())
    return tmp / "repo", hashes, stdout


@pytest.fixture
def committed_repo(committed_template, tmp_path) -> tuple[Path, dict[str, str], dict[str, str]]:
    """A copy of a repo whose whole pipeline ran and was committed (``committed_template``):
    the repo, its environment, and its outputs' hashes. Built once per test run."""
    template, expected, _ = committed_template
    home = tmp_path / "home"
    home.mkdir()
    repo = copy_repo(template, tmp_path / "repo")
    return repo, repo_env(home, src=repo / "src"), dict(expected)
