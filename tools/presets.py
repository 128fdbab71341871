"""Named sets of params (``presets/NAME.yaml``) as ``dvc exp run -S`` arguments.

    dvc exp run -n writeup $(python -m fmnist.presets writeup)

A preset is a partial params.yaml; this flattens it into ``-S section.key=value``
arguments so the experiment is an ordinary DVC experiment, diffable like any other.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import yaml

from fmnist.common import UserError, run_stage
from tools import ROOT

PRESETS = ROOT / "presets"


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out


def load_preset(name: str) -> dict[str, Any]:
    path = Path(name) if name.endswith(".yaml") else PRESETS / f"{name}.yaml"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in PRESETS.glob("*.yaml")))
        raise UserError(f"no preset {name!r} (known: {known})")
    return yaml.safe_load(path.read_text()) or {}


def set_args(preset: dict[str, Any]) -> list[str]:
    # JSON spelling of values is also YAML, which is how DVC parses -S values.
    return [f"--set-param={key}={json.dumps(value)}" for key, value in flatten(preset).items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("preset", help="a name in presets/ or a path to a YAML file")
    args = parser.parse_args()
    print(" ".join(set_args(load_preset(args.preset))))


if __name__ == "__main__":
    run_stage(main)
