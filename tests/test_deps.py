"""dvc.yaml's deps are the stages' import closures: no more, no less."""

import shutil
from pathlib import Path

import yaml

from tools import ROOT
from tools.deps import import_closure, problems


def test_every_stage_lists_exactly_the_files_it_runs():
    assert problems() == []


def copy_project(tmp_path: Path) -> Path:
    for name in ("dvc.yaml", "stages", "src"):
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, tmp_path / name)
    return tmp_path


def with_deps(tmp_path: Path, stage: str, edit) -> Path:
    """A copy of the project whose dvc.yaml has ``edit`` applied to ``stage``'s deps."""
    repo = copy_project(tmp_path)
    dvc = yaml.safe_load((repo / "dvc.yaml").read_text())
    edit(dvc["stages"][stage]["deps"])
    (repo / "dvc.yaml").write_text(yaml.safe_dump(dvc))
    return repo


def test_a_missing_dep_is_named(tmp_path):
    repo = with_deps(tmp_path, "evaluate", lambda d: d.remove("src/fmnist/report.py"))
    assert problems(repo) == ["evaluate: runs src/fmnist/report.py but does not list it in deps"]


def test_a_superfluous_dep_is_named(tmp_path):
    repo = with_deps(tmp_path, "download", lambda d: d.append("src/fmnist/train.py"))
    assert problems(repo) == ["download: lists src/fmnist/train.py in deps but does not run it"]


def test_function_level_imports_and_the_package_init_count(tmp_path):
    repo = copy_project(tmp_path)
    (repo / "src/fmnist/extra.py").write_text("X = 1\n")
    report = repo / "src/fmnist/report.py"
    report.write_text(report.read_text() + "\n\ndef late():\n    from fmnist import extra\n"
                      "    return extra.X\n")
    closure = import_closure(Path("stages/evaluate.py"), repo)
    assert "src/fmnist/extra.py" in closure and "src/fmnist/__init__.py" in closure
    assert problems(repo) == ["evaluate: runs src/fmnist/extra.py but does not list it in deps"]


def test_evaluate_does_not_run_the_training_loop():
    closure = import_closure(Path("stages/evaluate.py"))
    assert not {"src/fmnist/train.py", "src/fmnist/resume.py",
                "src/fmnist/batching.py"} & closure
