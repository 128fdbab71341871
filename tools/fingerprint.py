"""The numerics fingerprint: per-layer weight hashes after a few training steps of each
model, in each precision, on fixed synthetic images.

    python -m tools.fingerprint --check    # compare with tests/numerics_fingerprint.json
    python -m tools.fingerprint --write    # regenerate this host's entries in it
    python -m tools.fingerprint --show --numerics native   # this host's, pins lifted

Both models train with the project's own step (``fmnist.train``: the optimizer, the
schedule, augmentation, channels-last layout), the AlexNet at reduced widths so that a
check takes seconds, then score a few test images in both test-time views. The inputs
are image-like (a shaded silhouette on a black background, pixel statistics near
Fashion-MNIST's) and normalized with their own statistics as training normalizes, so
the kernels see the spread of values that real data gives them. A kernel that sums in
another order on another CPU changes a hash, and the check names the tier, the model,
the precision and the layer.

``portable`` (the default): each tier runs in a fresh process (the pins must precede
the first tensor operation), every tier this host can run (a lower tier by capping,
``FMNIST_NUMERICS_TIER``); its hashes are the same on every CPU of the tier, so CI holds
them on whatever host it lands on. ``native``: one process with every pin lifted (the
libraries choose by the machine), keyed by this host's CPU, not by a tier; the tests
use it to show that the fingerprint sees the kernels the pins hold back. The file keeps
each mode's entries under that mode's key.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from tools import ROOT, run_tool

FINGERPRINT_FILE = ROOT / "tests" / "numerics_fingerprint.json"
STEPS = 3
THREADS = 2
BATCH = 64
TEST_IMAGES = 50
SEED = 20261204
ALEXNET_ARCH = {"channels": [16, 32, 32, 32, 32], "fc": 256, "dropout": 0.5, "lrn": True,
                "lrn_size": 5}


def _digest(tensor) -> str:
    return hashlib.sha256(tensor.detach().float().contiguous().cpu().numpy().tobytes()
                          ).hexdigest()[:16]


def synthetic_images(n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` uint8 28x28 images: a shaded, textured ellipse of random size on a black
    background, so about half the pixels are 0 and the rest spread over 0..255 (pixel
    mean about 0.25, std 0.34 in [0, 1] units; Fashion-MNIST's are 0.29 and 0.35)."""
    y, x = np.mgrid[0:28, 0:28].astype(np.float64)
    cy, cx = 13.5 + rng.normal(0, 1.0, (2, n, 1, 1))
    a, b = rng.uniform(9, 14, (n, 1, 1)), rng.uniform(6, 13, (n, 1, 1))
    r = ((y - cy) / a) ** 2 + ((x - cx) / b) ** 2
    shade = (rng.uniform(80, 250, (n, 1, 1)) + rng.normal(0, 30, (n, 28, 28))
             + 40 * np.sin(y / rng.uniform(1.5, 4, (n, 1, 1))))
    return np.rint(np.clip(np.clip((1 - r) * 4, 0, 1) * shade, 0, 255)).astype(np.uint8)


def inputs():
    """The training and test splits, and the training split's pixel statistics in the
    units ``fmnist.data.to_input`` expects ([0, 1], as ``write_prepared`` computes
    them), so the normalized inputs have mean 0 and std 1 as in training."""
    import torch

    from fmnist.data import Split, Stats

    rng = np.random.default_rng(SEED)
    splits = []
    for n in (STEPS * BATCH, TEST_IMAGES):
        images = synthetic_images(n, rng)
        labels = rng.integers(0, 10, n).astype(np.int64)
        splits.append(Split(torch.from_numpy(images), torch.from_numpy(labels)))
    pixels = splits[0].images.numpy().astype(np.float64) / 255.0
    return splits[0], splits[1], Stats(float(pixels.mean()), float(pixels.std()))


def run_one(name: str, precision: str, numerics: str) -> dict[str, str]:
    """This process: pin, train ``STEPS`` steps of ``name`` in ``precision``, hash."""
    import torch

    from fmnist.batching import epoch_order, train_batches
    from fmnist.inference import predict_views
    from fmnist.models import spec
    from fmnist.runtime import setup_runtime
    from fmnist.train import make_trainer

    s = spec(name)
    params = s.load_params(ROOT / "params.yaml")
    update = {"amp": precision, "numerics": numerics, "threads": THREADS, "device": "cpu",
              "batch_size": BATCH, "ema": 0.0}
    if name == "alexnet":
        update["arch"] = s.arch.model_validate(ALEXNET_ARCH)
    params = params.model_copy(update=update)
    rt = setup_runtime(params, "fingerprint")
    if rt.numerics.problems:
        raise SystemExit(f"{name}/{precision}: the pins did not take: {rt.numerics.problems}")
    train, test, stats = inputs()
    trainer = make_trainer(name, params, rt.device, STEPS)
    gen = torch.Generator().manual_seed(1)
    order = epoch_order(len(train), params.seed, 0)
    trainer.model.train()
    for x, y in train_batches(train, BATCH, order, stats, params.augment, gen):
        trainer.step(x, y)
    out = {key: _digest(value) for key, value in trainer.result.state_dict().items()}
    views = predict_views(trainer.result, test, stats, 25, rt.device, precision)
    out.update({f"logits/{view}": _digest(logits) for view, logits in views.items()})
    return out


def cases(key: str, numerics: str = "portable") -> list[tuple[str, str]]:
    """(model, amp) pairs: bf16 where it is native, the first tier's in ``portable``,
    this CPU's (AVX512-BF16 or AMX) in ``native``."""
    from fmnist.numerics import TIERS

    if numerics == "native":
        from fmnist.runtime import native_bf16
        bf16 = native_bf16()
    else:
        bf16 = key == TIERS[0].name
    return [(m, p) for m in ("lenet", "alexnet") for p in ("none", "bf16")
            if p == "none" or bf16]


def tiers_here() -> list[str]:
    from fmnist.numerics import TIERS, cpu_flags, tier_of

    best = tier_of(cpu_flags())
    if best is None:
        return []
    return [t.name for t in TIERS[TIERS.index(best):]]


def host() -> str:
    """This CPU's kind, the key of ``native`` entries: vendor, family and model."""
    info: dict[str, str] = {}
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return (f"{info.get('vendor_id', 'unknown')} family {info.get('cpu family', '?')} "
            f"model {info.get('model', '?')}")


def keys_here(numerics: str) -> list[str]:
    """What this host fills in the file under ``numerics``: its tiers, or its CPU."""
    return tiers_here() if numerics == "portable" else [host()]


def measure(key: str, numerics: str = "portable") -> dict[str, dict[str, str]]:
    """Every case of ``key`` in a fresh process: pinned to the tier ``key`` in
    ``portable``; in ``native`` with every pin the caller's environment may hold
    removed, so the libraries choose by the machine."""
    from fmnist.numerics import TIER_ENV, TIERS, environment

    env = {k: v for k, v in os.environ.items()
           if k not in environment(TIERS[0], THREADS) and k != TIER_ENV}
    if numerics == "portable":
        env[TIER_ENV] = key
    proc = subprocess.run([sys.executable, "-m", "tools.fingerprint", "--run", key,
                           "--numerics", numerics], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{key}: {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def merge(committed: dict, numerics: str, here: dict) -> dict:
    """``committed`` with this host's entries of ``numerics`` replaced by ``here``; the
    other mode's entries, and this mode's of other tiers or hosts, stay as they were."""
    return {**committed, numerics: {**committed.get(numerics, {}), **here}}


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


def read_committed(path: Path) -> dict[str, dict[str, Any]]:
    """The fingerprint file: mode -> key -> case -> layer -> hash ({} where absent); a
    file of another shape is one line naming it."""
    from fmnist.common import UserError

    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: not a fingerprint file ({str(exc)[:80]}); restore it "
                        "with git or regenerate it with --write") from None
    if not isinstance(data, dict) or not all(
            isinstance(keys, dict) and all(isinstance(v, dict) for v in keys.values())
            for keys in data.values()):
        raise UserError(f"{path}: not a fingerprint file (mode -> key -> hashes); restore "
                        "it with git or regenerate it with --write")
    return data


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", action="store_true")
    mode.add_argument("--write", action="store_true")
    mode.add_argument("--show", action="store_true", help="print this host's hashes")
    mode.add_argument("--run", help=argparse.SUPPRESS)  # one tier or host, in this process
    ap.add_argument("--numerics", default="portable", choices=("portable", "native"))
    ap.add_argument("--file", type=Path, default=FINGERPRINT_FILE)
    args = ap.parse_args()
    if args.run:
        print(json.dumps({f"{name}/{precision}": run_one(name, precision, args.numerics)
                          for name, precision in cases(args.run, args.numerics)}))
        return 0
    committed = read_committed(args.file)  # before minutes of measuring, not after
    keys = keys_here(args.numerics)
    if not keys:
        print("this CPU is in no portable tier: nothing to fingerprint", file=sys.stderr)
        return 3
    here = {key: measure(key, args.numerics) for key in keys}
    if args.show:
        print(json.dumps(here, indent=1, sort_keys=True))
        return 0
    if args.write:
        args.file.write_text(json.dumps(merge(committed, args.numerics, here), indent=1,
                                        sort_keys=True) + "\n")
        print(f"{args.file}: wrote {args.numerics}: {', '.join(keys)}")
        return 0
    problems = []
    for key in keys:
        want = committed.get(args.numerics, {}).get(key)
        if want is None:
            problems.append(f"{args.numerics} {key}: no committed hashes "
                            f"(python -m tools.fingerprint --write --numerics {args.numerics})")
            continue
        problems += compare(key, want, here[key])
    for line in problems:
        print(line)
    if not problems:
        print(f"numerics fingerprint: {args.numerics} {', '.join(keys)} match "
              f"{args.file.name}")
    return 1 if problems else 0


if __name__ == "__main__":
    run_tool(main)
