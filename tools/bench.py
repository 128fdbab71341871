"""`make bench`: the project's training speed against a tutorial-style loop, in one run.

Prints, for each model, training images/second through the project's own loop and
through a naive baseline (torchvision's FashionMNIST dataset with ToTensor/Normalize and
``DataLoader(batch_size=128, shuffle=True)``, the same architecture built with stock
torch layers, the same optimizer), their ratio, the machine's fp32 matmul rate, each
model's counted training FLOPs per image and the fraction of that peak it reaches; and
the time of a no-op ``dvc repro``. Ratios are measured in this one run: absolute
numbers move with the machine's load.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from fmnist import NUM_CLASSES
from fmnist.batching import epoch_order, train_batches
from fmnist.common import positionals
from fmnist.data import Split, load_split, load_stats
from fmnist.files import write_json
from fmnist.models import INPUT_SHAPE, MODELS, LocalResponseNorm, ReLUMaxPool, spec
from fmnist.params import PARAMS_FILE, TrainParams
from fmnist.runtime import setup_runtime
from fmnist.train import make_trainer
from tools import ROOT, run_tool
from tools.repo import repo_env, stage_argv

TARGETS = {"lenet": {"baseline": 4.0},
           "alexnet": {"baseline": 1.4, "peak": 0.7, "bf16_peak": 0.6, "bf16_speedup": 1.8}}
NOOP_TARGET_S = 3.0


def timed_windows(steps: Iterator[int], windows: int, per_window: int,
                  warmup: int, sync=lambda: None) -> list[float]:
    """Images/second in each of ``windows`` windows of ``per_window`` steps after warm-up.

    ``steps`` yields the number of images each training step consumed; ``sync`` waits
    for queued device work (a GPU's), so that a window times the steps it ran.
    """
    for _ in range(warmup):
        next(steps)
    rates = []
    for _ in range(windows):
        sync()
        t0, n = time.perf_counter(), 0
        for _ in range(per_window):
            n += next(steps)
        sync()
        rates.append(n / (time.perf_counter() - t0))
    return rates


PEAK_SIZES = (512, 1024, 2048)


def _product(kernel: str, n: int, dtype: torch.dtype):
    """A matrix product of about n x n x n that runs through ``kernel``: a function that
    computes it, its FLOPs and its two operands.

    "mm": ``torch.mm``, which in fp32 torch hands to MKL (on AMD CPUs, MKL picks its
    AVX2 code: half of what AVX-512 does). "onednn": a 1x1 convolution of 1024 pixels,
    n channels in and out, which torch hands to oneDNN (AVX-512, and AVX512-BF16 in bf16),
    as it does the models' convolutions and every bf16 product.
    """
    if kernel == "mm":
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        return (lambda: a @ b), 2 * n**3, (a, b)
    x = torch.randn(1, n, 32, 32, dtype=dtype).contiguous(memory_format=torch.channels_last)
    w = torch.randn(n, n, 1, 1, dtype=dtype).contiguous(memory_format=torch.channels_last)
    return (lambda: torch.nn.functional.conv2d(x, w)), 2 * 1024 * n * n, (x, w)


def matmul_peak(dtype: torch.dtype, sizes: tuple[int, ...] = PEAK_SIZES, windows: int = 5,
                window_flop: float = 40e9) -> tuple[float, dict[str, float]]:
    """The machine's matrix-product peak in ``dtype``: the best window over several sizes
    and both of torch's CPU kernels (MKL's gemm, oneDNN's); also the best of each.

    The best, not the median: a window that a neighbour on a shared machine slowed down
    says nothing about the peak, and a low peak would flatter every fraction of it.
    Several sizes, because which size runs fastest depends on the caches and the kernel
    torch picks; one size alone moved by a third between runs. Both kernels, because
    in fp32 on this AMD CPU they differ twofold, and the lower would flatter a model.
    """
    by_kernel = {}
    for kernel in ("mm", "onednn"):
        best = 0.0
        for n in sizes:
            run, flop, _ = _product(kernel, n, dtype)
            reps = max(2, round(window_flop / flop))
            for _ in range(2):
                run()
            for _ in range(windows):
                t0 = time.perf_counter()
                for _ in range(reps):
                    run()
                best = max(best, flop * reps / (time.perf_counter() - t0) / 1e9)
        by_kernel[kernel] = best
    return max(by_kernel.values()), by_kernel


def training_flops_per_image(model: nn.Module, batch: int = 32) -> float:
    """Forward + backward FLOPs of one training step, counted by torch, per image.

    Counted on the model built from stock layers: the project's LRN sums its windows
    with a (mostly zero) matrix product, whose FLOPs are a way of computing, not work
    the model asks for; torch's own LRN, like every element-wise layer, counts none."""
    x, y = torch.randn(batch, *INPUT_SHAPE), torch.randint(0, NUM_CLASSES, (batch,))
    with FlopCounterMode(display=False) as counter:
        nn.functional.cross_entropy(model(x), y).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / batch


def model_flops(name: str, arch) -> float:
    """Training FLOPs per image of model ``name`` with ``arch`` (see above)."""
    return training_flops_per_image(stock_layers(spec(name).build(arch)))


def stock_layers(model: nn.Module) -> nn.Module:
    """The same architecture as a tutorial writes it: torch's own LocalResponseNorm, and
    ReLU then MaxPool2d as two layers."""
    for name, child in model.named_children():
        if isinstance(child, LocalResponseNorm):
            setattr(model, name, nn.LocalResponseNorm(child.size, child.alpha, child.beta,
                                                      child.k))
        elif isinstance(child, ReLUMaxPool):
            setattr(model, name, nn.Sequential(nn.ReLU(), nn.MaxPool2d(child.kernel_size)))
        else:
            stock_layers(child)
    return model


def project_steps(name: str, params: TrainParams, split: Split, prepared: Path,
                  device: str = "cpu") -> Iterator[int]:
    """The project's training steps; batched where ``split`` lives (as ``train`` does:
    on the GPU when training there)."""
    device = setup_runtime(params.model_copy(update={"device": device}), name).device
    trainer = make_trainer(name, params, device, total_steps=10**6)
    trainer.model.train()
    stats = load_stats(prepared) if params.normalize else None
    gen = torch.Generator().manual_seed(0)
    epoch = 0
    while True:
        order = epoch_order(len(split), params.seed, epoch)
        for x, y in train_batches(split, params.batch_size, order, stats,
                                  params.augment, gen):
            trainer.step(x, y)
            yield len(y)
        epoch += 1


def baseline_steps(name: str, params: TrainParams, raw: Path, scratch: Path,
                   mean: float, std: float) -> Iterator[int]:
    """The loop of a typical tutorial, on the same raw files."""
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    folder = scratch / "FashionMNIST" / "raw"
    folder.mkdir(parents=True, exist_ok=True)
    for path in raw.iterdir():  # download stores the IDX files as torchvision reads them
        if not (folder / path.name).exists():
            (folder / path.name).symlink_to(path.resolve())
    dataset = datasets.FashionMNIST(str(scratch), train=True, download=False,
                                    transform=transforms.Compose([
                                        transforms.ToTensor(),
                                        transforms.Normalize((mean,), (std,))]))
    loader = DataLoader(dataset, batch_size=128, shuffle=True)
    torch.manual_seed(params.seed)
    model = stock_layers(spec(name).build(params.arch))
    # The same update rule as the project's (momentum and Nesterov for SGD included),
    # without its fused kernels, as a tutorial writes it.
    if params.optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=params.lr, momentum=params.momentum,
                              nesterov=params.momentum > 0, weight_decay=params.weight_decay)
    else:
        opt_cls = torch.optim.Adam if params.optimizer == "adam" else torch.optim.AdamW
        opt = opt_cls(model.parameters(), lr=params.lr, weight_decay=params.weight_decay)
    criterion = nn.CrossEntropyLoss(label_smoothing=params.label_smoothing)
    model.train()
    while True:
        for x, y in loader:
            opt.zero_grad()
            loss = criterion(model(x), y)
            loss.backward()
            opt.step()
            yield len(y)


def noop_repro_seconds(repo: Path, env: dict[str, str]) -> tuple[float, str]:
    """Time `dvc repro` with nothing to do: of the whole pipeline where it is up to date,
    else of `preprocess` (which `make bench` brings up to date first); never starting
    a training run."""
    dvc = shutil.which("dvc", path=env["PATH"]) or "dvc"
    status = subprocess.run([dvc, "status", "--json"], cwd=repo, env=env, text=True,
                            capture_output=True)
    whole = status.returncode == 0 and json.loads(status.stdout or "{}") == {}
    target, where = ([], "the whole pipeline") if whole else (
        ["preprocess"], "download and preprocess (the pipeline is not up to date)")
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        proc = subprocess.run([dvc, "repro", *target], cwd=repo, env=env, text=True,
                              capture_output=True)
        times.append(time.perf_counter() - t0)
        if proc.returncode != 0 or "Running stage" in proc.stdout:
            raise RuntimeError(f"`dvc repro {' '.join(target)}` was not a no-op:\n"
                               f"{proc.stdout}{proc.stderr}")
    return statistics.median(times), where


def bench_model(name: str, params: TrainParams, split: Split, prepared: Path,
                windows: dict, base: float, peaks: dict[str, float]) -> dict:
    """The project's loop in fp32 and in bf16, against the baseline and the peaks."""
    n, per, warm = windows.get(name, (5, 10, 3))
    flops = model_flops(name, params.arch)
    out: dict = {"baseline_img_s": base, "train_mflop_per_image": flops / 1e6}
    for amp, label in (("none", "fp32"), ("bf16", "bf16")):
        p = params.model_copy(update={"amp": amp})
        rate = statistics.median(timed_windows(project_steps(name, p, split, prepared),
                                               n, per, warm))
        out[label] = {"img_s": rate, "achieved_gflops": rate * flops / 1e9,
                      "fraction_of_peak": rate * flops / (peaks[label] * 1e9)}
    out["project_img_s"] = out["fp32"]["img_s"]
    out["ratio"] = out["fp32"]["img_s"] / base
    out["bf16_over_fp32"] = out["bf16"]["img_s"] / out["fp32"]["img_s"]
    t = TARGETS.get(name, {})
    verdict = [f"ratio {out['ratio']:.2f}x (target {t['baseline']}x: "
               f"{'met' if out['ratio'] >= t['baseline'] else 'NOT met'})"]
    if "peak" in t:
        frac = out["fp32"]["fraction_of_peak"]
        verdict.append(f"fp32 peak fraction {frac:.2f} (target {t['peak']}: "
                       f"{'met' if frac >= t['peak'] else 'NOT met'})")
    if "bf16_peak" in t:
        frac, speedup = out["bf16"]["fraction_of_peak"], out["bf16_over_fp32"]
        verdict.append(f"bf16 peak fraction {frac:.2f} (target {t['bf16_peak']}: "
                       f"{'met' if frac >= t['bf16_peak'] else 'NOT met'}), "
                       f"bf16/fp32 {speedup:.2f}x (target {t['bf16_speedup']}x: "
                       f"{'met' if speedup >= t['bf16_speedup'] else 'NOT met'})")
    print(f"{name}: baseline {base:,.0f} img/s (batch 128); project (batch "
          f"{params.batch_size}) fp32 {out['fp32']['img_s']:,.0f} img/s = "
          f"{out['fp32']['fraction_of_peak']:.2f} of the fp32 peak, bf16 "
          f"{out['bf16']['img_s']:,.0f} img/s = {out['bf16']['fraction_of_peak']:.2f} of the "
          f"bf16 peak; {flops / 1e6:.1f} MFLOP/image; " + "; ".join(verdict))
    return out


def bench_gpu(names: list[str], params_path: str, split: Split, prepared: Path,
              quick: bool) -> dict:
    """On a CUDA device: each model's training rate in fp32 and bf16, with the uint8 split
    batched and augmented on the host (each batch then copied over) and on the GPU (what
    ``train`` does there)."""
    import torch.cuda

    out: dict = {"device": torch.cuda.get_device_name()}
    on_gpu = split.to(torch.device("cuda"))
    for name in names:
        params = spec(name).load_params(params_path)
        out[name] = {}
        for amp in ("none", "bf16"):
            p = params.model_copy(update={"amp": amp})
            for where, s in (("host", split), ("gpu", on_gpu)):
                rates = timed_windows(project_steps(name, p, s, prepared, "cuda"),
                                      *((2, 5, 3) if quick else (5, 50, 20)),
                                      sync=torch.cuda.synchronize)
                out[name][f"{amp}_{where}"] = statistics.median(rates)
            r = out[name]
            print(f"{name} {'fp32' if amp == 'none' else amp}: batches on the host "
                  f"{r[f'{amp}_host']:,.0f} img/s, on the GPU {r[f'{amp}_gpu']:,.0f} img/s "
                  f"({r[f'{amp}_gpu'] / r[f'{amp}_host']:.2f}x)")
    return out


# ---------------------------------------------------------------- portable numerics


def numerics_rate(name: str, precision: str, mode: str, params_file: str, prepared: Path,
                  quick: bool) -> float:
    """In this (fresh) process: the project's training rate of ``name`` in
    ``precision`` with ``numerics: mode``, the median of timed windows."""
    params = spec(name).load_params(params_file)
    params = params.model_copy(update={"amp": precision, "numerics": mode,
                                       "threads": params.threads or 2})
    split = load_split(prepared, "train")
    n, per, warm = (2, 2, 1) if quick else {"lenet": (5, 40, 10), "alexnet": (4, 4, 2)}[name]
    return statistics.median(timed_windows(project_steps(name, params, split, prepared),
                                           n, per, warm))


def numerics_cost(models: list[str], params_file: str, prepared: Path,
                  quick: bool) -> dict[str, dict[str, float]]:
    """``portable`` against ``native`` per model and precision, each rate from a fresh
    process (the pins must precede its first operation), the modes alternated so that
    the machine's drift falls on both."""
    from fmnist.runtime import native_bf16

    out = {}
    for name in models:
        for precision in ("none", "bf16") if native_bf16() else ("none",):
            rates: dict[str, list[float]] = {"native": [], "portable": []}
            for _ in range(1 if quick else 2):
                for mode in ("native", "portable"):
                    proc = subprocess.run(
                        [sys.executable, "-m", "tools.bench", "--numerics-rate", name,
                         precision, mode, "--params", params_file, "--prepared",
                         str(prepared), *(["--quick"] if quick else [])],
                        cwd=ROOT, capture_output=True, text=True, check=True)
                    rates[mode].append(float(proc.stdout.split()[-1]))
            native, portable = (statistics.median(rates[m]) for m in ("native", "portable"))
            label = f"{name}/{'fp32' if precision == 'none' else precision}"
            out[label] = {"native": round(native), "portable": round(portable),
                          "slowdown": round(native / portable, 3)}
            print(f"{label}: native {native:,.0f} img/s, portable {portable:,.0f} img/s: "
                  f"portable takes {native / portable:.2f}x native's time")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    raw, prepared = positionals(stage_argv("preprocess"))  # preprocess.py RAW OUT
    parser.add_argument("--prepared", default=str(ROOT / prepared))
    parser.add_argument("--raw", default=str(ROOT / raw))
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--params", default=str(ROOT / PARAMS_FILE))
    parser.add_argument("--repo", type=Path, default=ROOT,
                        help="the DVC project to time a no-op `dvc repro` in")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--quick", action="store_true",
                        help="a few steps per window: checks that it runs, times nothing")
    parser.add_argument("--gpu", action="store_true",
                        help="on a CUDA device: host- against GPU-side batching, fp32 and bf16")
    parser.add_argument("--numerics", action="store_true",
                        help="only portable against native numerics, per model and precision")
    parser.add_argument("--numerics-rate", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    prepared, raw = Path(args.prepared), Path(args.raw)
    if not (prepared / "train.pt").exists():
        raise SystemExit(f"{prepared} is missing: run `dvc repro preprocess` first")
    if args.numerics_rate:
        print(numerics_rate(*args.numerics_rate, args.params, prepared, args.quick))
        return
    if args.numerics:
        results = {"numerics": numerics_cost(args.models, args.params, prepared, args.quick)}
        if args.json:
            write_json(args.json, results)
        return

    split = load_split(prepared, "train")
    if args.gpu:
        results = bench_gpu(args.models, args.params, split, prepared, args.quick)
        if args.json:
            write_json(args.json, results)
        return
    stats = load_stats(prepared)
    results: dict[str, dict] = {}
    default_threads = torch.get_num_threads()
    torch.set_num_threads(spec(args.models[0]).load_params(args.params).threads
                          or torch.get_num_threads())
    peaks, kernels = {}, {}
    for label, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        peaks[label], by_kernel = matmul_peak(dtype, windows=2 if args.quick else 5)
        kernels[label] = by_kernel
        print(f"{label} matmul peak ({torch.get_num_threads()} threads, best window of "
              f"sizes {', '.join(map(str, PEAK_SIZES))}): {peaks[label]:.1f} GFLOP/s "
              f"(torch.mm {by_kernel['mm']:.0f}, oneDNN {by_kernel['onednn']:.0f})")
    print(f"bf16/fp32 matmul: {peaks['bf16'] / peaks['fp32']:.2f}x")
    torch.set_num_threads(default_threads)  # the tutorial baseline: torch's default
    # (timed windows, steps per window, warm-up steps)
    windows = {"lenet": (7, 40, 10), "alexnet": (5, 4, 2)}
    if args.quick:
        windows = dict.fromkeys(args.models, (2, 2, 1))
    with tempfile.TemporaryDirectory(prefix="fmnist-bench-") as scratch:
        sections = {name: spec(name).load_params(args.params) for name in args.models}
        # The baselines run first, in the state a fresh interpreter starts in (torch's
        # default thread count, glibc's default malloc settings): the project's loop sets
        # both for the whole process (setup_runtime), and a tutorial sets neither.
        base = {}
        for name, params in sections.items():
            n, per, warm = windows.get(name, (5, 10, 3))
            base[name] = statistics.median(timed_windows(
                baseline_steps(name, params, raw, Path(scratch), stats.mean,
                               stats.std),
                n, max(1, per * params.batch_size // 128), warm))
    for name, params in sections.items():
        results[name] = bench_model(name, params, split, prepared, windows, base[name], peaks)
    noop, where = noop_repro_seconds(args.repo, repo_env(os.environ.get("HOME", "/tmp")))
    print(f"no-op dvc repro: {noop:.2f} s in {where} (target < {NOOP_TARGET_S:g} s: "
          f"{'met' if noop < NOOP_TARGET_S else 'NOT met'})")
    results["noop_repro_s"] = noop
    results["matmul_gflops"] = peaks
    results["matmul_gflops_by_kernel"] = kernels
    results["numerics"] = numerics_cost(args.models, args.params, prepared, args.quick)
    if args.json:
        write_json(args.json, results)


if __name__ == "__main__":
    run_tool(main)
