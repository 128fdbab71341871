import pytest
import yaml

from fmnist.common import UserError
from fmnist.params import TRAIN_PARAMS, validate
from tools import ROOT
from tools.presets import flatten, load_preset, set_args
from tools.smoke import merge


def test_writeup_preset_gives_the_write_ups_settings():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    merged = merge(params, load_preset("writeup"))
    for name, model in TRAIN_PARAMS.items():
        section = f"train_{name}"
        p = validate(model, merged[section], section)
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
    with pytest.raises(UserError, match="no preset 'nope' \\(known: .*writeup"):
        load_preset("nope")
