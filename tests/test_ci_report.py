"""The pull-request report job of .github/workflows/ci.yml, run as GitHub runs it: its
steps read from the workflow (not a copy of them), in a fresh virtual environment that
holds only what the job's own install step installs, in a git repository with a base
commit and a pull request on top. A current pull request gets the check's verdict and
both diff tables, and its plots page; one that changes a stage's code without re-running
is reported stale and fails the job."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import venv
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tools import ROOT
from tools.repo import repo_env, run

pytestmark = pytest.mark.e2e

WORKFLOW = ROOT / ".github/workflows/ci.yml"
# What the expressions of the job's steps stand for, in a pull request against main
CONTEXT = {"github.base_ref": "main"}
BASE_REF = "main"
# Edited in the base commit, so that the pull request changes one param and one metric
PARAM = ("train_lenet", "epochs")
METRIC = ("metrics/lenet.json", ("test", "accuracy"))
EXPR = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")
STEP_OUTPUT = re.compile(r"^steps\.([\w-]+)\.outputs\.([\w-]+)\s*==\s*'([^']*)'$")


def job_steps() -> list[dict]:
    return yaml.safe_load(WORKFLOW.read_text())["jobs"]["report"]["steps"]


def expand(text: str) -> str:
    """``${{ ... }}`` as GitHub fills it in, for the expressions of CONTEXT."""
    def value(match: re.Match) -> str:
        if match.group(1) not in CONTEXT:
            raise KeyError(f"the test knows no value for ${{{{ {match.group(1)} }}}}")
        return CONTEXT[match.group(1)]
    return EXPR.sub(value, text)


def calls_gh(step: dict) -> bool:
    return bool(re.search(r"(^|[;&|(\s])gh\s", step.get("run", "")))


@dataclass
class Job:
    """What ran: per step its name, exit status and output; the steps' outputs."""
    ran: list[tuple[str, int, str]] = field(default_factory=list)
    outputs: dict[str, dict[str, str]] = field(default_factory=dict)
    summary: str = ""

    @property
    def failed(self) -> bool:
        return any(rc != 0 for _, rc, _ in self.ran)

    def log(self) -> str:
        return "\n".join(f"--- {name}: exit {rc}\n{out}" for name, rc, out in self.ran)


def read_outputs(path: Path) -> dict[str, str]:
    """A step's GITHUB_OUTPUT file: ``name=value`` lines and ``name<<DELIM`` blocks."""
    out, lines = {}, path.read_text().splitlines()
    while lines:
        line = lines.pop(0)
        if "<<" in line and ("=" not in line or line.index("<<") < line.index("=")):
            name, delim = line.split("<<", 1)
            end = lines.index(delim)
            out[name], lines = "\n".join(lines[:end]), lines[end + 1:]
        elif "=" in line:
            name, value = line.split("=", 1)
            out[name] = value
    return out


def condition(expr: str, job: Job) -> bool:
    match = STEP_OUTPUT.match(expr.strip())
    if not match:
        raise ValueError(f"the test cannot evaluate `if: {expr}`")
    step, name, value = match.groups()
    return job.outputs.get(step, {}).get(name, "") == value


def run_steps(steps: list[dict], repo: Path, env: dict[str, str], tmp: Path) -> Job:
    """The ``run:`` steps in order, each as GitHub's shell runs it (bash -eo pipefail, a
    script file), until one fails; ``uses:`` steps and the one that calls ``gh`` are
    skipped."""
    job = Job()
    for i, step in enumerate(steps):
        if "run" not in step or calls_gh(step):
            continue
        if "if" in step and not condition(step["if"], job):
            continue
        script, output, summary = (tmp / f"step{i}.{x}" for x in ("sh", "output", "summary"))
        script.write_text(expand(step["run"]))
        output.write_text("")
        summary.write_text("")
        step_env = {**env, **{k: expand(str(v)) for k, v in step.get("env", {}).items()},
                    "GITHUB_OUTPUT": str(output), "GITHUB_STEP_SUMMARY": str(summary),
                    "RUNNER_TEMP": str(tmp), "GITHUB_BASE_REF": BASE_REF,
                    "GITHUB_EVENT_NAME": "pull_request"}
        proc = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail",
                               str(script)], cwd=repo, env=step_env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        job.ran.append((step.get("name", step["run"].split("\n")[0]), proc.returncode,
                        proc.stdout))
        if "id" in step:
            job.outputs[step["id"]] = read_outputs(output)
        job.summary += summary.read_text()
        if proc.returncode != 0:
            break
    return job


def bump_param(text: str, section: str, key: str, by: int) -> str:
    """params.yaml with ``section.key`` (an integer) changed by ``by``, comments and the
    rest as they are."""
    lines = text.splitlines(keepends=True)
    start = lines.index(f"{section}:\n")
    for i in range(start + 1, len(lines)):
        match = re.match(rf"^  {key}: (\d+)(.*)$", lines[i], re.S)
        if match:
            lines[i] = f"  {key}: {int(match.group(1)) + by}{match.group(2)}"
            return "".join(lines)
        if lines[i][:1] not in (" ", "\n", "#"):
            break
    raise KeyError(f"params.yaml has no {section}.{key}")


def copy_project(dst: Path) -> None:
    """The project's files as the working tree holds them: those git tracks, and new
    ones git does not ignore (what the next commit may add)."""
    names = run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                ROOT).stdout.split("\0")
    for name in filter(None, names):
        src = ROOT / name
        if src.exists() or src.is_symlink():  # not deleted in the working tree
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / name, follow_symlinks=False)


@pytest.fixture(scope="module")
def pull_request(tmp_path_factory):
    """A git repo with ``origin/main`` (the base: one param and one metric edited) and the
    pull request checked out (the project as it is); a virtual environment holding what
    the job's install step installed (and nothing of this one's); the steps after it."""
    tmp = tmp_path_factory.mktemp("ci-report")
    home, repo, env_dir = tmp / "home", tmp / "repo", tmp / "venv"
    home.mkdir()
    repo.mkdir()
    env = repo_env(home)
    ours = {str(Path(sys.executable).parent), str(ROOT / ".venv/bin")}
    path = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p not in ours]
    env["PATH"] = os.pathsep.join([str(env_dir / "bin"), *path])
    # as on GitHub's runners: Python writes the bytecode it compiles (this machine kind
    # says not to, and every step would compile DVC anew)
    for name in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PYTHONDONTWRITEBYTECODE"):
        env.pop(name, None)

    copy_project(repo)
    run(["git", "init", "-q", "-b", "pr"], repo, env)
    params, metrics = repo / "params.yaml", repo / METRIC[0]
    original = {p: p.read_text() for p in (params, metrics)}
    params.write_text(bump_param(original[params], *PARAM, by=-1))
    values = json.loads(original[metrics])
    pr_metric = values[METRIC[1][0]][METRIC[1][1]]
    base_metric = round(pr_metric - 0.01, 4)
    values[METRIC[1][0]][METRIC[1][1]] = base_metric
    metrics.write_text(json.dumps(values, indent=2) + "\n")
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-q", "-m", "base"], repo, env)
    base = run(["git", "rev-parse", "HEAD"], repo, env).stdout.strip()
    for p, text in original.items():
        p.write_text(text)
    run(["git", "commit", "-q", "-am", "the pull request"], repo, env)
    run(["git", "update-ref", f"refs/remotes/origin/{BASE_REF}", base], repo, env)
    head = run(["git", "rev-parse", "HEAD"], repo, env).stdout.strip()
    pr_param = yaml.safe_load(original[params])[PARAM[0]][PARAM[1]]

    # setup-python's part: a bare interpreter first on PATH; then the job's install step,
    # with the real HOME (uv's and pip's caches)
    venv.EnvBuilder(with_pip=True).create(env_dir)
    steps = job_steps()
    assert sum(map(calls_gh, steps)) == 1  # the one step skipped for what it runs
    first = next(i for i, s in enumerate(steps) if "run" in s)
    job = run_steps(steps[:first + 1], repo, {**env, "HOME": os.environ["HOME"]}, tmp)
    assert not job.failed and job.ran, job.log()
    assert shutil.which("dvc", path=env["PATH"]) == str(env_dir / "bin/dvc")
    torch = subprocess.run([str(env_dir / "bin/python"), "-c", "import torch"], env=env,
                           capture_output=True)
    assert torch.returncode != 0, "the report job installs torch"
    return {"repo": repo, "env": env, "tmp": tmp, "steps": steps[first + 1:], "head": head,
            "param": (PARAM, pr_param - 1, pr_param),
            "metric": (METRIC, base_metric, pr_metric)}


def run_job(pr) -> Job:
    """The steps after the install, on a fresh checkout of the pull request's HEAD."""
    run(["git", "clean", "-fdxq"], pr["repo"], pr["env"])
    tmp = pr["tmp"] / f"run{len(list(pr['tmp'].glob('run*')))}"
    tmp.mkdir()
    return run_steps(pr["steps"], pr["repo"], pr["env"], tmp)


def table_rows(report: str, heading: str) -> list[list[str]]:
    """The rows of the Markdown table after ``heading`` (header and rule left out)."""
    lines = report[report.index(heading):].splitlines()[1:]
    table = [line for line in lines[:next((i for i, x in enumerate(lines)
                                           if x.startswith("#")), len(lines))]
             if line.startswith("|")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in table[2:]]


def test_report_of_a_current_pull_request(pull_request):
    pr = pull_request
    job = run_job(pr)
    assert not job.failed, job.log()
    assert job.outputs["report"] == {"stale": "0"}
    assert "failed to load" not in job.log(), job.log()
    report = (pr["repo"] / "dvc-report.md").read_text()
    assert "failed to load" not in report
    assert job.summary == report
    # the check's verdict; where it is not, the working tree's dvc.lock is stale
    verdict = report.splitlines()[1]
    assert verdict == ("### :white_check_mark: dvc.lock is up to date: the committed "
                       "results are this code's and params'"), report
    (section, key), base, now = pr["param"]
    assert table_rows(report, "### Params") == [["params.yaml", f"{section}.{key}",
                                                 str(base), str(now)]], report
    (path, (group, name)), base, now = pr["metric"]
    rows = table_rows(report, "### Metrics")
    assert len(rows) == 1 and rows[0][:2] == [path, f"{group}.{name}"], report
    assert [float(x) for x in rows[0][2:4]] == pytest.approx([base, now], abs=1e-5), report
    page = pr["repo"] / "plots.html"
    assert page.read_text().startswith("<!DOCTYPE html>")


def test_stale_pull_request_fails_the_job(pull_request):
    pr = pull_request
    repo, env = pr["repo"], pr["env"]
    try:
        with open(repo / "src/fmnist/train.py", "a") as f:
            f.write("\n# the training loop, edited and not re-run\n")
        run(["git", "commit", "-q", "-am", "an edit without `dvc repro`"], repo, env)
        job = run_job(pr)
        names = [name for name, _, _ in job.ran]
        assert job.outputs["report"] == {"stale": "1"}, job.log()
        report = (repo / "dvc-report.md").read_text()
        assert report.splitlines()[1].startswith("### :x: results are stale: re-run "
                                                 "`train-lenet`, `train-alexnet`"), report
        assert "train-lenet: src/fmnist/train.py modified" in report
        assert (repo / "plots.html").exists()
        # the last step ran, and failed the job
        assert job.failed and job.ran[-1][1] == 1 and names[-1] == pr["steps"][-1]["name"], \
            job.log()
    finally:
        run(["git", "reset", "-q", "--hard", pr["head"]], repo, env)
