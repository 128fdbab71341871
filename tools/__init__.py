"""Project tooling that no stage runs: benchmark, CI smoke run, synthetic data, presets,
README tables and the check of the committed results. Run from the repository root
(`python -m tools.NAME`); the package itself is found from this file, so it works
whether or not fmnist is installed in editable mode."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
