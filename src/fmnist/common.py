"""Small pieces every stage and `fmnist` command shares: user-facing errors, the argument
parser and the entry point that turn them into one line."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn


class UserError(Exception):
    """An error the user can fix (bad params, missing data, a checkpoint that does not fit).

    Stages print its message as one line and exit non-zero, without a traceback.
    """


class ParamsError(UserError):
    """A params file that cannot be used: a bad value, a missing key, invalid YAML."""


# Said after every refusal of a stage that DVC runs: DVC removed the stage's outputs
# before it started the command
RECOVERY = ("; DVC removed this stage's outputs before running it: `dvc checkout` "
            "restores them from the cache (after a bad value: fix it, or `git checkout "
            "params.yaml`, first)")


def first_line(exc: BaseException, limit: int = 100) -> str:
    """An exception's message as one short line for a one-line error: its first line,
    cut at ``limit`` characters, or the exception's type where the message is empty."""
    lines = str(exc).strip().splitlines()
    return lines[0][:limit] if lines else type(exc).__name__


class CommandParser(argparse.ArgumentParser):
    """argparse, with a wrong command line as one line (a UserError) like every other
    error a user can cause, instead of a usage block; and the per-model options of the
    stages that handle every model at once."""

    per_model_options: dict[str, str] = {}

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{self.prog}: {message} (see {self.prog} --help)")

    def add_per_model(self, options: dict[str, str], params_file: str) -> None:
        """The options of a stage that handles every model at once: ``--params``,
        ``--prepared``, ``--models NAME ...`` and, for each of ``options`` (name: help),
        an option that takes one path per model, in the order of ``--models``."""
        self.per_model_options = options
        self.add_argument("--params", default=params_file)
        self.add_argument("--prepared", type=Path, required=True)
        self.add_argument("--models", nargs="+", required=True, help="model names")
        for key, what in options.items():
            self.add_argument(f"--{key}", nargs="+", type=Path, required=True, help=what)

    def per_model(self, args: argparse.Namespace) -> list[tuple[str, ...]]:
        """A row per model: its name, then its path of each per-model option."""
        keys = list(self.per_model_options)
        if any(len(getattr(args, key)) != len(args.models) for key in keys):
            raise UserError(f"--{' --'.join(keys)} need one path per model in --models")
        return list(zip(args.models, *(getattr(args, key) for key in keys), strict=True))


def stage_command(pipeline: dict, stage: str) -> list[str]:
    """A stage's ``cmd`` in a parsed dvc.yaml, as words: ``[python, script, ...]``
    ([] where the stage or its cmd is missing)."""
    st = (pipeline.get("stages") or {}).get(stage)
    cmd = st.get("cmd") if isinstance(st, dict) else None
    return shlex.split(cmd) if isinstance(cmd, str) else []


def positionals(argv: list[str]) -> list[str]:
    """The positional arguments after the script in ``[python, script, ...]``, up to
    the first option."""
    rest = argv[2:]
    return rest[:next((i for i, w in enumerate(rest) if w.startswith("--")), len(rest))]


def option(argv: list[str], flag: str) -> list[str]:
    """The values of ``flag`` in an argument list (a stage's cmd in dvc.yaml, the one
    place paths live): the words after it, up to the next option; empty where absent."""
    if flag not in argv:
        return []
    rest = argv[argv.index(flag) + 1:]
    end = next((i for i, w in enumerate(rest) if w.startswith("--")), len(rest))
    return rest[:end]


# Set by relaunch_under_torchrun for its ranks: where a rank's one-line error goes, so
# that the launcher ends with that line instead of torchrun's multi-line summary
ERROR_FILE_ENV = "FMNIST_ERROR_FILE"


def report_to_launcher(message: str) -> None:
    path = os.environ.get(ERROR_FILE_ENV)
    if not path:
        return
    try:  # the first rank to fail is the one reported
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except OSError:
        return
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(message.replace("\n", " ") + "\n")


MAX_ERROR = 1000  # characters of a one-line error: a 100,000-character path is cut


def fail(message: str) -> NoReturn:
    if len(message) > MAX_ERROR:  # cut in the middle: the start and the end both say much
        half = (MAX_ERROR - 3) // 2
        message = message[:half] + "..." + message[-(MAX_ERROR - 3 - half):]
    print(f"error: {message}", file=sys.stderr)
    report_to_launcher(message)
    sys.exit(2)


def run_command(main: Callable[[], None]) -> None:
    """Run a stage's or an `fmnist` command's ``main``: a UserError becomes one line on
    stderr and exit code 2 (with the recovery hint under `dvc repro`)."""
    try:
        main()
    except UserError as exc:
        hint = RECOVERY if os.environ.get("DVC_STAGE") else ""
        fail(f"{exc}{hint}")
    except BrokenPipeError:  # `fmnist predict ... | head`: the reader has left
        sys.stderr.close()
        os._exit(141)
    except OSError as exc:  # the machine's, not the code's: a full disk, a lost mount
        where = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f)
        wrong_path = isinstance(exc, FileNotFoundError | IsADirectoryError | NotADirectoryError)
        fail(f"{where + ': ' if where else ''}{exc.strerror or first_line(exc)}"
             + ("" if wrong_path else " (outputs are written aside and swapped in at the "
                "end: what this run had not yet swapped in is as it was)"))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
