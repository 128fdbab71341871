"""Small pieces every stage and command shares: user-facing errors and the entry point."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import NoReturn


class UserError(Exception):
    """An error the user can fix (bad params, missing data, a checkpoint that does not fit).

    Stages print its message as one line and exit non-zero, without a traceback.
    """


def first_line(exc: BaseException, limit: int = 100) -> str:
    """An exception's message as one short line for a one-line error: its first line,
    cut at ``limit`` characters, or the exception's type where the message is empty."""
    lines = str(exc).strip().splitlines()
    return lines[0][:limit] if lines else type(exc).__name__


class StageArgumentParser(argparse.ArgumentParser):
    """argparse, with a wrong command line as one line (a UserError) like every other
    error a user can cause, instead of a usage block."""

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{self.prog}: {message} (see {self.prog} --help)")


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's ``main``; a UserError becomes one line on stderr and exit code 2."""
    try:
        main()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
