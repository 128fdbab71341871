"""The CUDA path: the same training and evaluation on a GPU as on the CPU.

These need a CUDA device, so CI (which has none) skips them; they were run on an H100
(see the README's "On a GPU"). The LRN's CUDA check sits with its CPU twin in
test_models.py; everything else in the suite runs on the CPU.
"""

import json
import warnings

import pytest
import torch

from fmnist.batching import epoch_order, train_batches
from fmnist.checkpoint import load_checkpoint
from fmnist.data import load_split, load_stats
from fmnist.inference import predict_logits
from fmnist.models import MODELS, build_model
from fmnist.params import Augment
from tests.support import run_stages, run_train, run_train_interrupted, set_params, weights_hash

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CUDA = torch.device("cuda")


@pytest.mark.parametrize("name", sorted(MODELS))
def test_models_compute_the_same_on_cuda_as_on_the_cpu(name):
    torch.manual_seed(0)
    arch = {"channels": [8, 16, 16, 16, 16], "fc": 64, "dropout": 0.5, "lrn": True,
            "lrn_size": 5} if name == "alexnet" else {}
    cpu = build_model(name, arch).double().eval()  # eval: dropout draws differ by device
    gpu = build_model(name, arch).double().eval().to(CUDA, memory_format=torch.channels_last)
    gpu.load_state_dict(cpu.state_dict())
    x, y = torch.randn(16, 1, 28, 28, dtype=torch.float64), torch.randint(0, 10, (16,))
    for model, dev in ((cpu, "cpu"), (gpu, CUDA)):
        torch.nn.functional.cross_entropy(model(x.to(dev)), y.to(dev)).backward()
    torch.testing.assert_close(gpu(x.to(CUDA)).cpu(), cpu(x))
    for (k, p_cpu), p_gpu in zip(cpu.named_parameters(), gpu.parameters(), strict=True):
        torch.testing.assert_close(p_gpu.grad.cpu(), p_cpu.grad, msg=k)


def test_batches_built_on_the_gpu_are_the_cpu_batches(prepared):
    """Training keeps the uint8 split on the GPU and crops, flips and erases there: the
    same random draws (from the CPU generator), the same pixels, bit for bit."""
    split = load_split(prepared / "data/prepared", "train")
    stats = load_stats(prepared / "data/prepared")
    augment = Augment(crop_padding=2, hflip=True, erase=0.5, erase_area=[0.02, 0.4],
                      erase_ratio=[0.3, 3.3])
    order = epoch_order(len(split), seed=3, epoch=1)
    batches = {}
    for where, s in (("cpu", split), ("cuda", split.to(CUDA))):
        gen = torch.Generator().manual_seed(7)
        batches[where] = list(train_batches(s, 64, order, stats, augment, gen))
    assert len(batches["cpu"]) == len(batches["cuda"]) > 1
    for (xc, yc), (xg, yg) in zip(batches["cpu"], batches["cuda"], strict=True):
        assert xg.device.type == "cuda" and yg.device.type == "cuda"
        assert torch.equal(xg.cpu(), xc) and torch.equal(yg.cpu(), yc)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_cuda_training_is_deterministic(prepared, name):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_train(prepared, name, "a", epochs=2, device="cuda")
    timings = json.loads((prepared / "a/timings.json").read_text())
    assert timings["environment"]["device"] == "cuda"
    nondeterministic = [str(w.message) for w in caught if "determinis" in str(w.message)]
    assert not nondeterministic, nondeterministic
    run_train(prepared, name, "b", epochs=2, device="cuda")
    ha = weights_hash(prepared / "a/model/model.pt")  # a plain load: saved on the CPU
    assert weights_hash(prepared / "b/model/model.pt") == ha
    run_train(prepared, name, "c", epochs=2, device="cuda", seed=2)
    assert weights_hash(prepared / "c/model/model.pt") != ha


def test_cuda_training_learns_the_synthetic_task(prepared):
    # Not compared step for step with a CPU run: cuDNN convolves in TF32 by default, and
    # training amplifies that rounding (an H100 and the CPU were 0.06 apart in train
    # loss after 4 epochs of this). The float64 test above compares the arithmetic.
    meta = run_train(prepared, "lenet", "a", epochs=6, lr=0.01, device="cuda")
    assert meta["final"]["val_accuracy"] > 0.8


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_interrupted_amp_run_resumes_to_the_uninterrupted_weights(prepared, amp):
    lenet = run_train(prepared, "lenet", "lenet", epochs=4, lr=0.01, device="cuda", amp=amp)
    assert lenet["final"]["val_accuracy"] > 0.8  # it learns in reduced precision
    run_train(prepared, "alexnet", "ref", epochs=3, device="cuda", amp=amp)
    state = run_train_interrupted(prepared, "alexnet", "b", epochs=3, device="cuda", amp=amp)
    assert state["epoch"] == 1
    assert bool(state["scaler"]) == (amp == "fp16")  # fp16 keeps its loss scale to resume
    run_train(prepared, "alexnet", "b", epochs=3, device="cuda", amp=amp)
    assert (weights_hash(prepared / "b/model/model.pt")
            == weights_hash(prepared / "ref/model/model.pt"))


def test_stages_pick_the_gpu_and_its_model_evaluates_on_a_cpu(prepared):
    auto = {"device": "auto"}
    set_params(prepared, {"train_lenet": auto, "train_alexnet": auto, "evaluate": auto})
    run_stages(prepared, "train-lenet", "train-alexnet", "evaluate")
    for name in ("lenet", "alexnet"):
        timings = json.loads((prepared / f"metrics/timings/{name}.json").read_text())
        assert timings["environment"]["device"] == "cuda"
    on_gpu = {n: json.loads((prepared / f"metrics/{n}.json").read_text())
              for n in ("lenet", "alexnet")}

    set_params(prepared, {"evaluate": {"device": "cpu"}})
    run_stages(prepared, "evaluate")
    for name in ("lenet", "alexnet"):
        on_cpu = json.loads((prepared / f"metrics/{name}.json").read_text())
        for split in ("train", "test"):
            assert on_cpu[split]["accuracy"] == pytest.approx(
                on_gpu[name][split]["accuracy"], abs=0.006), (name, split)
            assert on_cpu[split]["loss"] == pytest.approx(
                on_gpu[name][split]["loss"], rel=1e-3), (name, split)

    model, _ = load_checkpoint(prepared / "models/alexnet", "alexnet")
    val = load_split(prepared / "data/prepared", "val")
    stats = load_stats(prepared / "data/prepared")
    cpu_logits = predict_logits(model, val, stats, 1000, torch.device("cpu"))
    gpu_logits = predict_logits(model.to(CUDA), val, stats, 1000, CUDA)
    torch.testing.assert_close(gpu_logits, cpu_logits, rtol=1e-3, atol=1e-3)
