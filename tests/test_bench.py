"""`make bench` end to end on synthetic data (--quick: it runs, it counts; it times nothing)."""

import json
import subprocess

import pytest

from tests.support import PY
from tools import ROOT

# LeNet-5's training FLOPs per image, by hand (multiply-adds count 2). Forward: conv1
# 6*24*24*25*2, conv2 16*8*8*150*2, dense 256*120*2 + 120*84*2 + 84*10*2. Backward: the
# weight gradient of every layer costs its forward again, the input gradient too except
# for conv1, whose input (the image) needs none.
CONV1, CONV2 = 6 * 24 * 24 * 25 * 2, 16 * 8 * 8 * 150 * 2
DENSE = (256 * 120 + 120 * 84 + 84 * 10) * 2
LENET_TRAIN_FLOPS = (CONV1 + CONV2 + DENSE) + CONV1 + 2 * (CONV2 + DENSE)


def test_bench_quick(dvc_repo, tmp_path):
    from tools.repo import run
    repo, env = dvc_repo
    run(["dvc", "repro", "preprocess"], repo, env)  # a no-op `dvc repro preprocess` to time
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [PY, "-m", "tools.bench", "--quick", "--models", "lenet", "--repo", str(repo),
         "--prepared", str(repo / "data/prepared"), "--raw", str(repo / "data/raw"),
         "--params", str(repo / "params.yaml"), "--json", str(out)],
        cwd=ROOT, text=True, capture_output=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    r = json.loads(out.read_text())
    lenet = r["lenet"]
    assert lenet["baseline_img_s"] > 0
    assert round(lenet["train_mflop_per_image"] * 1e6) == LENET_TRAIN_FLOPS
    for precision in ("fp32", "bf16"):  # both precisions, each against its own peak
        assert lenet[precision]["img_s"] > 0 and r["matmul_gflops"][precision] > 0
        assert lenet[precision]["achieved_gflops"] == pytest.approx(
            lenet[precision]["img_s"] * LENET_TRAIN_FLOPS / 1e9)
    assert 0 < r["noop_repro_s"] < 60
    assert "fp32 matmul peak" in proc.stdout and "bf16 matmul peak" in proc.stdout
    assert "of the bf16 peak" in proc.stdout and "no-op dvc repro" in proc.stdout
    # portable against native numerics, per precision, each from its own process
    for precision in ("fp32", "bf16"):
        cost = r["numerics"][f"lenet/{precision}"]
        assert cost["native"] > 0 and cost["portable"] > 0
        assert cost["slowdown"] == pytest.approx(cost["native"] / cost["portable"], rel=0.01)
    assert "portable takes" in proc.stdout


@pytest.mark.parametrize("slow", ["mm", "onednn"])
def test_matmul_peak_is_the_best_of_both_kernels(monkeypatch, slow):
    """With one kernel slowed down tenfold, the peak is the other one's: a peak measured
    through one kernel only (or the lower of the two) fails."""
    import time

    import torch

    import tools.bench as bench
    product = bench._product

    def slowed(kernel, n, dtype):
        run, flop, operands = product(kernel, n, dtype)
        if kernel != slow:
            return run, flop, operands

        def slow_run():
            t0 = time.perf_counter()
            out = run()
            time.sleep(9 * (time.perf_counter() - t0) + 1e-4)
            return out
        return slow_run, flop, operands

    monkeypatch.setattr(bench, "_product", slowed)
    peak, by_kernel = bench.matmul_peak(torch.float32, sizes=(64, 128), windows=2,
                                        window_flop=1e7)
    fast = "onednn" if slow == "mm" else "mm"
    assert set(by_kernel) == {"mm", "onednn"}
    assert by_kernel[slow] < by_kernel[fast] and peak == by_kernel[fast]


@pytest.mark.parametrize("kernel", ["mm", "onednn"])
def test_peak_products_compute_the_products_they_count(kernel):
    """The peak's FLOPs are those of a real matrix product: the 1x1 convolution is
    (1024 pixels x n) @ (n x n), the same numbers as torch.mm of those matrices."""
    import torch

    from tools.bench import _product
    torch.manual_seed(0)
    n = 32
    run, flop, (a, b) = _product(kernel, n, torch.float64)
    out = run()
    if kernel == "mm":
        assert flop == 2 * n**3
        torch.testing.assert_close(out, torch.einsum("ik,kj->ij", a, b))
    else:
        assert flop == 2 * 1024 * n * n and out.shape == (1, n, 32, 32)
        rows = a.permute(0, 2, 3, 1).reshape(1024, n)  # pixels x channels in
        torch.testing.assert_close(out.permute(0, 2, 3, 1).reshape(1024, n),
                                   torch.einsum("pk,ok->po", rows, b.reshape(n, n)))


def test_counted_flops_are_the_models_work_not_the_lrns_band_product():
    """The LRN's window sums run as a matrix product with a mostly zero band: those
    FLOPs are not the model's, so the AlexNet counts the same with and without LRN."""
    from fmnist.models import AlexNetArch, build_model
    from tools.bench import model_flops, training_flops_per_image

    arch = {"channels": [8, 16, 16, 16, 16], "fc": 64, "dropout": 0.5, "lrn_size": 5}
    with_lrn = model_flops("alexnet", AlexNetArch(**arch, lrn=True))
    without = training_flops_per_image(build_model("alexnet", {**arch, "lrn": False}))
    assert with_lrn == without > 0


@pytest.mark.e2e
def test_profile_step_reports_ablations_and_operators(workdir):
    """`python -m tools.profile_step` on a tiny AlexNet: the step time, what taking out
    each layer kind saves, and torch.profiler's operator table."""
    proc = subprocess.run(
        [PY, "-m", "tools.profile_step", "--model", "alexnet", "--amp", "none",
         "--params", str(workdir / "params.yaml"), "--rounds", "1", "--steps", "2",
         "--ops", "5"], cwd=ROOT, text=True, capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "ms per step" in out
    for ablation in ("without LRN", "without dropout", "without either"):
        assert f"  {ablation}: " in out and "of the step)" in out
    assert "aten::" in out and "Self CPU time total" in out
