"""Presets: partial params.yaml files, given to `dvc exp run` as --set-param arguments."""

import shlex
import subprocess

import pytest
import yaml

from fmnist.common import UserError
from fmnist.models import MODELS
from fmnist.params import validate
from fmnist.presets import flatten, load_preset, set_args
from tests.support import PY
from tools import ROOT
from tools.repo import merge

PRESETS = ROOT / "presets"


def test_writeup_preset_gives_the_write_ups_settings():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    merged = merge(params, load_preset("writeup", PRESETS))
    for s in MODELS.values():
        p = validate(s.params, merged[s.section], s.section)
        assert (p.optimizer, p.lr, p.weight_decay, p.batch_size, p.epochs, p.seed) == (
            "adam", 0.001, 0.01, 128, 10, 1)
        assert p.schedule == "constant" and not p.normalize and p.label_smoothing == 0
        assert p.augment.crop_padding == 0 and not p.augment.hflip
    # the architecture stays the default one
    assert merged["train_alexnet"]["arch"] == params["train_alexnet"]["arch"]


def test_set_args_are_yaml_values_dvc_can_parse():
    args = set_args({"a": {"b": "adam", "c": 0.5, "d": False, "e": {"f": 2}}})
    assert args == ['--set-param=a.b="adam"', "--set-param=a.c=0.5",
                    "--set-param=a.d=false", "--set-param=a.e.f=2"]
    for arg in args:
        key, value = arg.removeprefix("--set-param=").split("=", 1)
        assert flatten({"a": {"b": "adam", "c": 0.5, "d": False, "e": {"f": 2}}})[key] == \
            yaml.safe_load(value)


def test_unknown_preset():
    with pytest.raises(UserError, match="no preset 'nope' \\(known in .*presets/: .*writeup"):
        load_preset("nope", PRESETS)


@pytest.mark.e2e
def test_the_fmnist_command_prints_a_preset_and_has_help():
    """`fmnist presets writeup` from the project root, as the README shows it, and
    --help for the command and each subcommand."""
    proc = subprocess.run([PY, "-m", "fmnist.cli", "presets", "writeup"], cwd=ROOT,
                          capture_output=True, text=True, check=True)
    assert shlex.split(proc.stdout) == set_args(load_preset("writeup", PRESETS))
    for args in ([], ["presets"], ["reproduce"]):
        proc = subprocess.run([PY, "-m", "fmnist.cli", *args, "--help"], cwd=ROOT,
                              capture_output=True, text=True)
        assert proc.returncode == 0 and "usage: fmnist" in proc.stdout, proc.stderr
    proc = subprocess.run([PY, "-m", "fmnist.cli", "presets", "nope"], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.startswith("error: no preset 'nope'")


def test_a_value_holding_a_space_stays_one_word_and_nested_values_are_refused(tmp_path):
    from fmnist.presets import shell_words
    spaced = tmp_path / "spaced.yaml"
    spaced.write_text("evaluate:\n  note: two words\n")
    words = shlex.split(shell_words(set_args(load_preset(str(spaced)))))
    assert words == ['--set-param=evaluate.note="two words"']
    nested = tmp_path / "nested.yaml"
    nested.write_text("train_lenet:\n  augment:\n    erase_area: [[1, 2]]\n")
    with pytest.raises(UserError, match="erase_area: list values cannot be set"):
        load_preset(str(nested))
    dated = tmp_path / "dated.yaml"
    dated.write_text("train_lenet:\n  seed: 2026-12-04\n")  # a date, to DVC too
    with pytest.raises(UserError, match="seed: date values cannot be set"):
        load_preset(str(dated))
