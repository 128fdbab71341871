"""dvc.yaml's deps are the stages' import closures (fmnist.closure): no more, no less."""

from pathlib import Path

import yaml

from fmnist.closure import import_closure
from fmnist.common import stage_command
from tools import ROOT
from tools.repo import copy_project, pipeline


def closure_of(script: str, root: Path = ROOT) -> set[str]:
    root = root.resolve()
    return {str(p.relative_to(root)) for p in import_closure(root / script, root / "src")}


def problems(root: Path = ROOT) -> list[str]:
    """Each stage's missing and superfluous .py deps, one line each."""
    out = []
    dvc = pipeline(root)
    for stage, st in dvc["stages"].items():
        declared = {d for d in st.get("deps", []) if d.endswith(".py")}
        needed = closure_of(stage_command(dvc, stage)[1], root)  # python SCRIPT ...
        out += [f"{stage}: runs {f} but does not list it in deps"
                for f in sorted(needed - declared)]
        out += [f"{stage}: lists {f} in deps but does not run it"
                for f in sorted(declared - needed)]
    return out


def test_every_stage_lists_exactly_the_files_it_runs():
    assert problems() == []


def with_deps(tmp_path: Path, stage: str, edit) -> Path:
    """A copy of the project whose dvc.yaml has ``edit`` applied to ``stage``'s deps."""
    repo = copy_project(tmp_path, files=("dvc.yaml", "stages", "src"))
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
    repo = copy_project(tmp_path, files=("dvc.yaml", "stages", "src"))
    (repo / "src/fmnist/extra.py").write_text("X = 1\n")
    report = repo / "src/fmnist/report.py"
    report.write_text(report.read_text() + "\n\ndef late():\n    from fmnist import extra\n"
                      "    return extra.X\n")
    closure = closure_of("stages/evaluate.py", repo)
    assert "src/fmnist/extra.py" in closure and "src/fmnist/__init__.py" in closure
    assert problems(repo) == ["evaluate: runs src/fmnist/extra.py but does not list it in deps"]


def test_evaluate_does_not_run_the_training_loop():
    closure = closure_of("stages/evaluate.py")
    assert not {"src/fmnist/train.py", "src/fmnist/resume.py",
                "src/fmnist/batching.py"} & closure


def test_a_stage_runs_its_own_checkouts_code_not_the_installed_package(tmp_path):
    """`dvc exp run --queue` or `--temp` runs a stage in a copy of the repository: the
    deps DVC hashed are the copy's, so the code that runs must be the copy's too (the
    link stages/fmnist -> ../src/fmnist), not the package installed from the main
    checkout, which may have changed since the experiment was queued."""
    import os
    import subprocess
    import sys

    repo = copy_project(tmp_path, files=("stages", "src"))
    init = repo / "src/fmnist/__init__.py"
    init.write_text(init.read_text() + "\nprint('the copy of the package ran')\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "stages/download.py", "--help"], cwd=repo,
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "the copy of the package ran" in proc.stdout
