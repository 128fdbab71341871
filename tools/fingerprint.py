"""The numerics fingerprint: per-layer weight hashes after a few training steps of each
model, in each precision, in ``portable`` numerics on fixed synthetic data.

    python -m tools.fingerprint --check    # compare with tests/numerics_fingerprint.json
    python -m tools.fingerprint --write    # regenerate this tier's entries in it

Both models train with the project's own step (``fmnist.train``: the optimizer, the
schedule, augmentation, channels-last layout), the AlexNet at reduced widths so that a
check takes seconds, then score a few test images in both test-time views. A kernel
that sums in another order on another CPU changes a hash, and the check names the tier,
the model, the precision and the layer. Each tier runs in a fresh process (the pins must
precede the first tensor operation); ``--check`` and ``--write`` cover every tier this
host can run (a lower tier by capping, ``FMNIST_NUMERICS_TIER``). CI runs it on whatever
host it lands on, so a vendor-dependent kernel fails CI before it reaches a user.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from tools import ROOT, run_tool

FINGERPRINT_FILE = ROOT / "tests" / "numerics_fingerprint.json"
STEPS = 3
THREADS = 2
ALEXNET_ARCH = {"channels": [16, 32, 32, 32, 32], "fc": 256, "dropout": 0.5, "lrn": True,
                "lrn_size": 5}


def _digest(tensor) -> str:
    return hashlib.sha256(tensor.detach().float().contiguous().cpu().numpy().tobytes()
                          ).hexdigest()[:16]


def run_one(name: str, precision: str, numerics: str) -> dict[str, str]:
    """This process: pin, train ``STEPS`` steps of ``name`` in ``precision``, hash."""
    import numpy as np
    import torch

    from fmnist.batching import epoch_order, train_batches
    from fmnist.data import Split, Stats
    from fmnist.inference import predict_views
    from fmnist.models import spec
    from fmnist.runtime import setup_runtime
    from fmnist.train import make_trainer

    s = spec(name)
    params = s.load_params(ROOT / "params.yaml")
    update = {"amp": precision, "numerics": numerics, "threads": THREADS, "device": "cpu",
              "batch_size": 64, "ema": 0.0}
    if name == "alexnet":
        update["arch"] = s.arch.model_validate(ALEXNET_ARCH)
    params = params.model_copy(update=update)
    rt = setup_runtime(params, "fingerprint")
    if rt.numerics.problems:
        raise SystemExit(f"{name}/{precision}: the pins did not take: {rt.numerics.problems}")
    rng = np.random.default_rng(20261204)
    train = Split(torch.from_numpy(rng.integers(0, 256, (STEPS * 64, 28, 28), dtype=np.uint8)),
                  torch.from_numpy(rng.integers(0, 10, STEPS * 64).astype(np.int64)))
    test = Split(torch.from_numpy(rng.integers(0, 256, (50, 28, 28), dtype=np.uint8)),
                 torch.from_numpy(rng.integers(0, 10, 50).astype(np.int64)))
    stats = Stats(72.9, 90.0)
    trainer = make_trainer(name, params, rt.device, STEPS)
    gen = torch.Generator().manual_seed(1)
    order = epoch_order(len(train), params.seed, 0)
    trainer.model.train()
    for x, y in train_batches(train, 64, order, stats, params.augment, gen):
        trainer.step(x, y)
    out = {key: _digest(value) for key, value in trainer.result.state_dict().items()}
    views = predict_views(trainer.result, test, stats, 25, rt.device, precision)
    out.update({f"logits/{view}": _digest(logits) for view, logits in views.items()})
    return out


def cases(tier: str) -> list[tuple[str, str]]:
    from fmnist.numerics import TIERS

    bf16 = tier == TIERS[0].name  # native bf16: the first tier's
    return [(m, p) for m in ("lenet", "alexnet") for p in ("none", "bf16")
            if p == "none" or bf16]


def tiers_here() -> list[str]:
    from fmnist.numerics import TIERS, cpu_flags, tier_of

    best = tier_of(cpu_flags())
    if best is None:
        return []
    return [t.name for t in TIERS[TIERS.index(best):]]


def measure(tier: str, numerics: str = "portable") -> dict[str, dict[str, str]]:
    """Every case of ``tier``, in a fresh process (``--tier``) pinned to it."""
    env = {**os.environ, "FMNIST_NUMERICS_TIER": tier}
    proc = subprocess.run([sys.executable, "-m", "tools.fingerprint", "--tier", tier,
                           "--numerics", numerics], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{tier}: {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def compare(tier: str, want: dict[str, dict[str, str]],
            got: dict[str, dict[str, str]]) -> list[str]:
    lines = []
    for case in sorted(set(want) | set(got)):
        w, g = want.get(case, {}), got.get(case, {})
        for layer in sorted(set(w) | set(g)):
            if w.get(layer) != g.get(layer):
                model, precision = case.split("/")
                lines.append(f"{tier}: {model} {'fp32' if precision == 'none' else precision}"
                             f" {layer}: committed {w.get(layer)}, here {g.get(layer)}")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", action="store_true")
    mode.add_argument("--write", action="store_true")
    mode.add_argument("--show", action="store_true", help="print this host's hashes")
    mode.add_argument("--tier", help=argparse.SUPPRESS)
    ap.add_argument("--numerics", default="portable", choices=("portable", "native"))
    ap.add_argument("--file", type=Path, default=FINGERPRINT_FILE)
    args = ap.parse_args()
    if args.tier:
        print(json.dumps({f"{name}/{precision}": run_one(name, precision, args.numerics)
                          for name, precision in cases(args.tier)}))
        return 0
    tiers = tiers_here()
    if not tiers:
        print("this CPU is in no portable tier: nothing to fingerprint", file=sys.stderr)
        return 3
    here = {tier: measure(tier, args.numerics) for tier in tiers}
    if args.show:
        print(json.dumps(here, indent=1, sort_keys=True))
        return 0
    committed = json.loads(args.file.read_text()) if args.file.exists() else {}
    if args.write:
        committed.update(here)
        args.file.write_text(json.dumps(committed, indent=1, sort_keys=True) + "\n")
        print(f"{args.file}: wrote {', '.join(tiers)}")
        return 0
    problems = []
    for tier in tiers:
        if tier not in committed:
            problems.append(f"{tier}: no committed hashes (python -m tools.fingerprint --write)")
            continue
        problems += compare(tier, committed[tier], here[tier])
    for line in problems:
        print(line)
    if not problems:
        print(f"numerics fingerprint: {', '.join(tiers)} match {args.file.name}")
    return 1 if problems else 0


if __name__ == "__main__":
    run_tool(main)
