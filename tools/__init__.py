"""Developer and CI tooling that no stage and no user command runs: the benchmark
(`bench`), the step profiler (`profile_step`), the generated tables of README.md and
docs/models.md (`readme`) and the harness of temporary git+DVC repositories and of
the stages' commands read from dvc.yaml (`repo`). Run from the repository root:
`python -m tools.NAME`. User commands are `fmnist` subcommands (src/fmnist/cli.py)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_tool(main) -> None:
    """A tool's entry point: its exit code, and every error a user can cause (a
    UserError, a missing file, a folder where a file belongs) as one line, exit 2.
    ``tools.lock`` runs before the project is installed (``make install``): there the
    same, for the errors of the machine (OSError), without importing ``fmnist``."""
    import sys

    def call() -> None:
        code = main()
        sys.exit(code if isinstance(code, int) else 0)

    try:
        from fmnist.common import run_command
    except ImportError:  # not installed yet
        try:
            call()
        except OSError as exc:
            where = f"{exc.filename}: " if exc.filename else ""
            print(f"error: {where}{exc.strerror or exc}", file=sys.stderr)
            sys.exit(2)
        return
    run_command(call)
