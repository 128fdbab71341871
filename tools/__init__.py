"""Developer and CI tooling that no stage and no user command runs: the benchmark
(`bench`), the step profiler (`profile_step`), the generated tables of README.md and
docs/models.md (`readme`) and the harness of temporary git+DVC repositories and of
the stages' commands read from dvc.yaml (`repo`). Run from the repository root:
`python -m tools.NAME`. User commands are `fmnist` subcommands (src/fmnist/cli.py)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_tool(main) -> None:
    """A tool's entry point: its exit code, and every error a user can cause (a
    UserError, a missing file, a folder where a file belongs) as one line, exit 2."""
    import sys

    from fmnist.common import run_stage

    def call() -> None:
        code = main()
        sys.exit(code if isinstance(code, int) else 0)

    run_stage(call)
