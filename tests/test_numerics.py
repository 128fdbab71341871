"""Portable numerics: the pins, their check, and the fingerprint that CI holds against
the committed hashes on whichever vendor's host it lands."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fmnist import numerics
from tools import ROOT
from tools.fingerprint import FINGERPRINT_FILE, compare, tiers_here

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


@pytest.mark.e2e
@pytest.mark.skipif(not tiers_here(), reason="this CPU is in no portable tier")
def test_numerics_fingerprint_matches_the_committed_hashes():
    """Both models, a few steps, fp32 and bf16 (where the tier has it), every tier this
    host can run: the per-layer hashes committed in tests/numerics_fingerprint.json.
    A failure here means a kernel sums differently on this CPU than on the ones the
    hashes were made on; the lines name the layer."""
    committed = json.loads(FINGERPRINT_FILE.read_text())
    assert set(tiers_here()) <= set(committed), "no committed hashes for this tier"
    done = subprocess.run([sys.executable, "-m", "tools.fingerprint", "--check"], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
