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


def test_bench_quick(prepared, tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [PY, "-m", "tools.bench", "--quick", "--models", "lenet",
         "--prepared", str(prepared / "data/prepared"), "--raw", str(prepared / "data/raw"),
         "--params", str(prepared / "params.yaml"), "--json", str(out)],
        cwd=ROOT, text=True, capture_output=True, timeout=600)
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


def test_matmul_peak_is_the_best_of_both_kernels():
    import torch

    from tools.bench import matmul_peak
    peak, by_kernel = matmul_peak(torch.float32, sizes=(64, 128), windows=2, window_flop=1e7)
    assert set(by_kernel) == {"mm", "onednn"} and peak == max(by_kernel.values()) > 0


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
    from fmnist.models import build_model
    from fmnist.params import AlexNetArch
    from tools.bench import model_flops, training_flops_per_image

    arch = {"channels": [8, 16, 16, 16, 16], "fc": 64}
    with_lrn = model_flops("alexnet", AlexNetArch(**arch, lrn=True))
    without = training_flops_per_image(build_model("alexnet", {**arch, "lrn": False}))
    assert with_lrn == without > 0


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
