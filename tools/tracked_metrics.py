"""The metrics files a git checkout holds: those dvc.yaml declares (a stage's `metrics:`,
the top-level `metrics:`) that git tracks, one per line. The pull-request report diffs
these:

    dvc metrics diff origin/main --targets $(python -m tools.tracked_metrics) --md

Without targets DVC also reads the metrics that are cached outputs (DVCLive's
metrics/live/*/metrics.json), which a clone holds only after `dvc pull`, and warns that
it "failed to load some metrics" for every revision.
"""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

from tools import run_tool
from tools.repo import pipeline


def declared(root: Path) -> list[str]:
    """Every metrics file dvc.yaml declares, in its order."""
    spec = pipeline(root)
    entries = [m for st in spec.get("stages", {}).values() for m in st.get("metrics", [])]
    entries += spec.get("metrics", [])
    return list(dict.fromkeys(next(iter(m)) if isinstance(m, dict) else m for m in entries))


def tracked(root: Path) -> list[str]:
    """The declared metrics files git tracks in ``root``."""
    paths = declared(root)
    proc = subprocess.run(["git", "ls-files", "-z", "--", *paths], cwd=root,
                          capture_output=True, text=True, check=True)
    in_git = set(proc.stdout.split("\0"))
    return [p for p in paths if p in in_git]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.tracked_metrics",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", type=Path, default=Path.cwd())
    args = parser.parse_args(argv)
    paths = tracked(args.repo)
    if not paths:
        raise SystemExit("tracked-metrics: git tracks none of dvc.yaml's metrics files")
    print("\n".join(paths))
    return 0


if __name__ == "__main__":
    run_tool(main)
