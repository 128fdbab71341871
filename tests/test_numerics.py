"""Portable numerics: the pins, their check, and the fingerprint that CI holds against
the committed hashes on whichever vendor's host it lands."""

from __future__ import annotations

import functools
import json
import subprocess
import sys

import pytest

from fmnist import numerics
from tools import ROOT, fingerprint
from tools.fingerprint import FINGERPRINT_FILE, compare, host, inputs, measure, merge, tiers_here

TIER1 = numerics.TIERS[0]
ZEN4 = {"avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni",
        "avx512_bf16"}


def test_tiers_by_cpu_flags(monkeypatch):
    monkeypatch.delenv(numerics.TIER_ENV, raising=False)
    assert numerics.tier_of(ZEN4, "x86_64") is TIER1
    assert numerics.tier_of(ZEN4 | {"amx_tile", "amx_bf16"}, "x86_64") is TIER1  # AMX Xeon
    assert numerics.tier_of({"avx2", "fma", "avx512f"}, "x86_64").name == "x86-64-avx2"
    assert numerics.tier_of({"sse4_2"}, "x86_64") is None
    assert numerics.tier_of(ZEN4, "aarch64") is None
    monkeypatch.setenv(numerics.TIER_ENV, "x86-64-avx2")  # a lower tier, capped
    assert numerics.tier_of(ZEN4, "x86_64").name == "x86-64-avx2"


def test_portable_pins_every_library_and_the_threads():
    env = numerics.environment(TIER1, 3)
    assert env["MKL_CBWR"] == "COMPATIBLE" and env["MKL_DYNAMIC"] == "FALSE"
    assert env["MKL_NUM_THREADS"] == env["OMP_NUM_THREADS"] == "3"
    assert env["ONEDNN_MAX_CPU_ISA"] == "AVX512_CORE_BF16"  # AMX off on a Xeon
    assert env["ATEN_CPU_CAPABILITY"] == "avx512"
    assert env["ONEDNN_DEFAULT_FPMATH_MODE"] == "STRICT"


def _run(code: str, **env: str) -> subprocess.CompletedProcess:
    import os
    clean = {k: v for k, v in os.environ.items()
             if k not in numerics.environment(TIER1, 1) and k != numerics.TIER_ENV}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**clean, **env}, cwd=ROOT)


PIN_AND_CHECK = """
import json, torch
from fmnist import numerics
{before}
n = numerics.pin('portable', 2); torch.set_num_threads(2)
print(json.dumps(numerics.check(n).__dict__))
"""


@pytest.mark.skipif(numerics.tier_of(numerics.cpu_flags()) is None,
                    reason="this CPU is in no portable tier")
def test_check_confirms_pins_made_before_the_first_operation():
    done = _run(PIN_AND_CHECK.format(before=""))
    got = json.loads(done.stdout)
    assert got["problems"] == [] and got["tier"] == tiers_here()[0], done.stderr


@pytest.mark.skipif(numerics.tier_of(numerics.cpu_flags()) is None,
                    reason="this CPU is in no portable tier")
def test_check_names_what_did_not_take_when_pinned_too_late():
    # A matmul before the pins: MKL has chosen its branch already
    done = _run(PIN_AND_CHECK.format(before="torch.ones(64, 64) @ torch.ones(64, 64)"))
    got = json.loads(done.stdout)
    assert got["tier"] is None, done.stderr
    assert any("MKL" in p for p in got["problems"])


def test_a_changed_hash_names_the_tier_model_precision_and_layer():
    want = {"lenet/none": {"conv1.weight": "aa", "fc1.bias": "bb"}}
    got = {"lenet/none": {"conv1.weight": "aa", "fc1.bias": "cc"}}
    assert compare("t1", want, got) == ["t1: lenet fp32 fc1.bias: committed bb, here cc"]
    assert compare("t1", want, want) == []


def test_write_keeps_each_mode_under_its_own_key(tmp_path, monkeypatch, capsys):
    """``--write --numerics native`` adds this CPU's native entry and leaves every
    portable tier alone; a portable write replaces this host's tiers only."""
    file = tmp_path / "fingerprint.json"
    old = {"t1": {"lenet/none": {"w": "old1"}}, "t2": {"lenet/none": {"w": "old2"}}}
    file.write_text(json.dumps({"portable": old}))
    monkeypatch.setattr(fingerprint, "keys_here",
                        lambda numerics: ["t1"] if numerics == "portable" else ["cpu"])
    monkeypatch.setattr(fingerprint, "measure", lambda key, numerics="portable":
                        {"lenet/none": {"w": f"{numerics} {key}"}})

    def run(*args: str) -> int:
        monkeypatch.setattr(sys, "argv", ["fingerprint", *args, "--file", str(file)])
        return fingerprint.main()

    assert run("--write", "--numerics", "native") == 0
    native = {"cpu": {"lenet/none": {"w": "native cpu"}}}
    assert json.loads(file.read_text()) == {"portable": old, "native": native}
    assert run("--write") == 0
    assert json.loads(file.read_text()) == {
        "portable": {"t1": {"lenet/none": {"w": "portable t1"}}, "t2": old["t2"]},
        "native": native}
    assert run("--check") == 0 and run("--check", "--numerics", "native") == 0
    assert merge({"native": native}, "portable", {}) == {"native": native, "portable": {}}
    capsys.readouterr()


def test_fingerprint_inputs_have_the_spread_of_normalized_images():
    """The pixel statistics are in the units the input transform expects ([0, 1]): in
    0-255 units every input would sit near one value, and the kernels would see none of
    the spread that real images give them."""
    from fmnist.data import to_input

    train, test, stats = inputs()
    assert 0 < stats.mean < 1 and 0 < stats.std < 1
    for split in (train, test):
        pixels = split.images.float()
        assert 0.3 < (pixels == 0).float().mean() < 0.7 and pixels.max() >= 250
        assert len(set(split.labels.tolist())) == 10
    x = to_input(train.images, stats)
    assert abs(float(x.mean())) < 1e-3 and abs(float(x.std()) - 1) < 1e-3
    assert float(x.max() - x.min()) > 2.5


@pytest.fixture(scope="module")
def portable_here():
    """A tier's portable hashes on this host (one process per tier), measured once for
    the module's tests."""
    return functools.cache(measure)


@pytest.mark.e2e
@pytest.mark.skipif(not tiers_here(), reason="this CPU is in no portable tier")
def test_numerics_fingerprint_matches_the_committed_hashes(portable_here):
    """Both models, a few steps, fp32 and bf16 (where the tier has it), every tier this
    host can run: the per-layer hashes committed in tests/numerics_fingerprint.json.
    A failure here means a kernel sums differently on this CPU than on the ones the
    hashes were made on; the lines name the layer."""
    committed = json.loads(FINGERPRINT_FILE.read_text())["portable"]
    assert set(tiers_here()) <= set(committed), "no committed hashes for this tier"
    problems = [line for tier in tiers_here()
                for line in compare(tier, committed[tier], portable_here(tier))]
    assert not problems, "\n".join(problems)


@pytest.mark.e2e
@pytest.mark.skipif(not tiers_here(), reason="this CPU is in no portable tier")
def test_the_fingerprint_sees_the_kernels_that_the_pins_hold_back(portable_here):
    """With every pin lifted (``native``), at least one model and precision hashes
    differently from the best tier's portable run: on an AMX Xeon, bf16 runs on AMX and
    fp32 on MKL's Intel SGEMM; on AMD, fp32 leaves MKL's COMPATIBLE branch. A fingerprint
    that cannot tell those kernels apart could not catch them on another vendor's host."""
    portable = portable_here(tiers_here()[0])
    native = measure(host(), "native")
    shared = sorted(set(portable) & set(native))
    assert shared, f"no case in common: portable {sorted(portable)}, native {sorted(native)}"
    assert any(portable[case] != native[case] for case in shared), \
        f"native and portable hash alike in every case ({', '.join(shared)})"
