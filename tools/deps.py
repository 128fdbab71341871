"""Which project files a stage's script runs: its import closure inside the package.

    python -m tools.deps    # print each stage's .py deps as dvc.yaml should list them

Found with ``ast``, so module-level and function-level imports count alike; importing
any ``fmnist.X`` runs ``fmnist/__init__.py`` too. A test compares this with dvc.yaml.
"""

from __future__ import annotations

import ast
from pathlib import Path

import yaml

from tools import ROOT

PACKAGE = "fmnist"


def _module_file(src: Path, module: str) -> Path | None:
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    base = src.joinpath(*parts)
    if (base / "__init__.py").exists():
        return base / "__init__.py"
    if base.with_suffix(".py").exists():
        return base.with_suffix(".py")
    return None


def _imported_modules(path: Path) -> set[str]:
    mods: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            mods.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            mods.add(node.module)
            # `from fmnist import figures` imports the submodule fmnist.figures
            mods.update(f"{node.module}.{a.name}" for a in node.names)
    return mods


def import_closure(script: Path, root: Path = ROOT) -> set[str]:
    """Project files (relative to ``root``) that running ``script`` executes."""
    src = root / "src"
    seen: set[Path] = set()
    todo = [root / script]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for module in _imported_modules(path):
            parts = module.split(".")
            # every package on the way is imported too: fmnist/__init__.py
            for i in range(1, len(parts) + 1):
                f = _module_file(src, ".".join(parts[:i]))
                if f is not None and f not in seen:
                    todo.append(f)
    return {str(p.relative_to(root)) for p in seen}


def stage_script(cmd: str) -> str:
    """The script a stage's ``cmd`` runs (``python stages/x.py ...``)."""
    words = cmd.split()
    return next(w for w in words if w.endswith(".py"))


def declared_py_deps(root: Path = ROOT) -> dict[str, tuple[str, set[str]]]:
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    return {name: (stage_script(st["cmd"]), {d for d in st.get("deps", []) if d.endswith(".py")})
            for name, st in stages.items()}


def problems(root: Path = ROOT) -> list[str]:
    """Each stage's missing and superfluous .py deps, one line each."""
    out = []
    for stage, (script, declared) in declared_py_deps(root).items():
        needed = import_closure(Path(script), root)
        out += [f"{stage}: runs {f} but does not list it in deps"
                for f in sorted(needed - declared)]
        out += [f"{stage}: lists {f} in deps but does not run it"
                for f in sorted(declared - needed)]
    return out


def main() -> None:
    for stage, (script, _) in declared_py_deps().items():
        print(f"{stage}:")
        for f in sorted(import_closure(Path(script))):
            print(f"  - {f}")


if __name__ == "__main__":
    main()
