import json
import re
import shutil
from itertools import pairwise

import pytest
import torch
from pydantic import ValidationError

from fmnist.common import UserError
from fmnist.models import (
    MODELS,
    Dropout,
    LocalResponseNorm,
    ReLUMaxPool,
    build_model,
    count_parameters,
)
from tools import ROOT, readme

TINY_ALEXNET = {"channels": [4, 8, 8, 8, 8], "fc": 16, "dropout": 0.5, "lrn": True,
                "lrn_size": 5}


def test_lenet_has_the_write_ups_44426_parameters():
    assert count_parameters(build_model("lenet")) == 44_426


def alexnet_count_by_hand(channels, fc):
    convs = [(1, channels[0], 5)] + [(a, b, 3) for a, b in pairwise(channels)]
    n = sum(cin * cout * k * k + cout for cin, cout, k in convs)
    flat = channels[-1] * 3 * 3
    return n + flat * fc + fc + fc * fc + fc + fc * 10 + 10


def test_alexnet_parameter_count_as_committed():
    arch = MODELS["alexnet"].load_params(ROOT / "params.yaml").arch
    assert (arch.channels, arch.fc) == ([16, 64, 128, 128, 128], 4096)
    expected = alexnet_count_by_hand(arch.channels, arch.fc)
    assert expected == 21_923_690
    assert count_parameters(build_model("alexnet", arch)) == expected


def test_alexnet_variant_from_params():
    arch = {"channels": [16, 64, 128, 128], "fc": 256, "lrn": False, "dropout": 0.2,
            "lrn_size": 5}
    model = build_model("alexnet", arch)
    assert count_parameters(model) == alexnet_count_by_hand([16, 64, 128, 128], 256)
    kinds = [type(m).__name__ for m in model.modules()]
    assert "LocalResponseNorm" not in kinds and kinds.count("Conv2d") == 4
    assert [m.p for m in model.modules() if isinstance(m, Dropout)] == [0.2, 0.2]
    with_lrn = build_model("alexnet", {**arch, "lrn": True})
    assert sum(isinstance(m, LocalResponseNorm) for m in with_lrn.modules()) == 2


@pytest.mark.parametrize("name", sorted(MODELS))
def test_forward_shape(name):
    arch = TINY_ALEXNET if name == "alexnet" else {}
    out = build_model(name, arch)(torch.randn(5, 1, 28, 28))
    assert out.shape == (5, 10)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_overfits_a_batch(name):
    torch.manual_seed(0)
    arch = {**TINY_ALEXNET, "channels": [8, 16, 16, 16, 16], "fc": 64, "dropout": 0.0} \
        if name == "alexnet" else {}
    # channels-last, as training builds it (fmnist.train)
    model = build_model(name, arch).to(memory_format=torch.channels_last)
    x = torch.randn(64, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (64,))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(150):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05
    assert (model(x).argmax(1) == y).all()


def test_unknown_model():
    with pytest.raises(UserError, match="unknown model 'vgg' \\(known: lenet, alexnet; "
                                        "their stages: train-lenet, train-alexnet\\)"):
        build_model("vgg")


def test_an_arch_missing_a_key_names_it():
    with pytest.raises(UserError, match="^params.yaml: train_alexnet.arch.lrn_size: Field "
                                        "required$"):
        build_model("alexnet", {k: v for k, v in TINY_ALEXNET.items() if k != "lrn_size"})


def test_each_spec_derives_its_section_stage_and_params_type():
    s = MODELS["alexnet"]
    assert (s.section, s.stage) == ("train_alexnet", "train-alexnet")
    params = s.load_params(ROOT / "params.yaml")
    assert isinstance(params.arch, s.arch)
    with pytest.raises(ValidationError, match="arch.fc"):  # the params type checks arch
        s.params.model_validate({**params.model_dump(), "arch": {**TINY_ALEXNET, "fc": 0}})


@pytest.mark.parametrize("size", [1, 2, 4, 5])
@pytest.mark.parametrize("shape", [(3, 16, 7, 7), (2, 5, 4, 3)])
def test_lrn_matches_torch(size, shape):
    torch.manual_seed(size)
    x = torch.randn(*shape, dtype=torch.float64) * 3
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours = LocalResponseNorm(size, alpha=0.05, beta=0.75, k=2.0)
    ref = torch.nn.LocalResponseNorm(size, alpha=0.05, beta=0.75, k=2.0)
    y1, y2 = ours(x1), ref(x2)
    torch.testing.assert_close(y1, y2)
    g = torch.randn_like(y1)
    y1.backward(g)
    y2.backward(g)
    torch.testing.assert_close(x1.grad, x2.grad)


@pytest.mark.parametrize("device", [
    "cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                         reason="needs a CUDA device"))])
def test_lrn_default_hyperparameters_float32(device):
    x = (torch.relu(torch.randn(8, 64, 14, 14)) * 10).to(device)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1, y2 = LocalResponseNorm(5)(x1), torch.nn.LocalResponseNorm(5)(x2)
    torch.testing.assert_close(y1, y2, rtol=1e-5, atol=1e-6)
    y1.sum().backward()
    y2.sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-4, atol=1e-6)


def test_lrn_gradcheck():
    x = torch.randn(2, 6, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: LocalResponseNorm(3, 0.1, 0.75, 1.0)(t), (x,))


def test_readme_and_model_tables_are_generated_from_the_code_and_metrics():
    assert readme.stale() == [], "out of date: run `python -m tools.readme`"
    models_doc = (ROOT / readme.MODELS_DOC).read_text()
    for name in MODELS:
        assert readme.architecture_table(name) in models_doc
    assert re.search(r"\*\*44,426\*\*", models_doc)


def test_readme_results_table_follows_the_metrics(tmp_path):
    """The results block changes when a metrics file does: it is generated, not pasted."""
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    (tmp_path / "metrics/timings").mkdir(parents=True)
    metrics = {"trainable_params": 44_426, "epochs": 3, "train": {},
               "val": {"loss": 0.5, "accuracy": 0.81234},
               "test": {"accuracy": 0.87654, "loss": 0.4321}}
    (tmp_path / "metrics/lenet.json").write_text(json.dumps(metrics))
    (tmp_path / "metrics/timings/lenet.json").write_text(
        json.dumps({"train_seconds": 12.3, "images_per_second": 4567}))
    table = readme.results_table(tmp_path)
    assert "| LeNet-5 | 44,426 | 3 | 0.8123 | **0.8765** | n/a | n/a | 0.432 | 12 s | 4,567 |" \
        in table
    assert "AlexNet" not in table  # no metrics, no row
    # and the seeds' spread, from metrics/seeds.json (tools.seeds)
    seeds = {"lenet": {"runs": [{}, {}, {}], "single": {"mean": 0.91, "std": 0.002},
                       "hflip": {"mean": 0.92, "std": 0.0015}}}
    (tmp_path / "metrics/seeds.json").write_text(json.dumps(seeds))
    assert "| 0.9100 ± 0.0020 / 0.9200 ± 0.0015 (3 seeds) |" in readme.results_table(tmp_path)


def test_dropout_matches_torch_in_distribution():
    torch.manual_seed(0)
    x = torch.ones(200_003)  # not a multiple of 8: the bytes of the last word are cut
    for p in (0.0, 0.25, 0.5, 0.3):  # 0.3: not a multiple of 1/256, drawn by torch.rand
        d = Dropout(p).train()
        y = d(x)
        kept = (y != 0).float().mean().item()
        assert abs(kept - (1 - p)) < 0.005
        assert torch.allclose(y[y != 0], torch.full_like(y[y != 0], 1 / (1 - p)))
        assert torch.equal(d.eval()(x), x)
    # every byte of the random words decides one element: pairs of neighbours (one word's
    # bytes) and elements 8 apart (the same byte of successive words) are independent
    keep = Dropout(0.5).train().keep_mask(torch.empty(400_000)).float()
    for lag in (1, 7, 8):
        both = (keep[lag:] * keep[:-lag]).mean().item()
        assert abs(both - 0.25) < 0.005, lag
    x = torch.randn(64, 8, requires_grad=True)
    y = Dropout(0.5).train()(x)
    y.sum().backward()
    torch.testing.assert_close(x.grad, (y != 0).float() * 2.0)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_relu_maxpool_is_exactly_relu_then_maxpool(memory_format):
    torch.manual_seed(0)
    x = torch.randn(8, 6, 24, 24)
    x[:, :, :6] = 0.25    # a flat positive region: four-way ties in every window
    x[:, :, 6:10] = -0.5  # a flat negative one
    x[:, :, 10:12, :4] = 0.0
    x = x.contiguous(memory_format=memory_format)
    g = torch.randn(8, 6, 12, 12)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    ref = torch.nn.Sequential(torch.nn.ReLU(), torch.nn.MaxPool2d(2))(a)
    ours = ReLUMaxPool(2)(b)
    ref.backward(g)
    ours.backward(g)
    assert torch.equal(ours, ref)
    assert torch.equal(b.grad, a.grad)  # bit for bit: the same element of each window


def test_lrn_in_bf16_keeps_its_sums_in_fp32():
    """bf16 input, torch's LRN in fp32 as the reference: within one bf16 rounding of the
    output (relative 2**-8), forward and gradient."""
    torch.manual_seed(0)
    x = (torch.randn(8, 16, 7, 7) * 4).to(torch.bfloat16)
    ref_in = x.float().requires_grad_(True)
    ref = torch.nn.LocalResponseNorm(5, 1e-4, 0.75, 1.0)(ref_in)
    ours_in = x.clone().requires_grad_(True)
    ours = LocalResponseNorm(5)(ours_in)
    assert ours.dtype == torch.bfloat16 and ours_in.grad is None
    tol = 2.0**-8  # one rounding to bf16's 8-bit mantissa
    torch.testing.assert_close(ours.float(), ref, rtol=tol, atol=1e-6)
    g = torch.randn_like(ref)
    ref.backward(g)
    ours.backward(g.to(torch.bfloat16))
    assert ours_in.grad.dtype == torch.bfloat16
    torch.testing.assert_close(ours_in.grad.float(), ref_in.grad, rtol=2 * tol, atol=1e-3)
