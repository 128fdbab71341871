"""`make bench` end to end on synthetic data (--quick: it runs, it counts; it times nothing)."""

import json
import subprocess

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
    assert lenet["project_img_s"] > 0 and lenet["baseline_img_s"] > 0
    assert lenet["ratio"] == lenet["project_img_s"] / lenet["baseline_img_s"]
    assert round(lenet["train_mflop_per_image"] * 1e6) == LENET_TRAIN_FLOPS
    assert 0 < r["noop_repro_s"] < 60 and r["matmul_gflops"] > 0
    assert "lenet: project" in proc.stdout and "ratio" in proc.stdout
    assert "no-op dvc repro" in proc.stdout
