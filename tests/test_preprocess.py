import json

import numpy as np
import pytest
import torch

from fmnist.batching import augment_batch, epoch_order, erase_batch
from fmnist.data import load_split, load_stats, to_input
from fmnist.preprocess import split_validation
from tests.support import file_sha256, run_stage


def augment(**kw):
    from fmnist.params import Augment
    return Augment(**{"crop_padding": 0, "hflip": False, "erase": 0.0,
                      "erase_area": [0.02, 0.4], "erase_ratio": [0.3, 3.3], **kw})


def test_stratified_seeded_split():
    labels = np.repeat(np.arange(10), 100).astype(np.uint8)
    images = np.arange(1000 * 784, dtype=np.int64).astype(np.uint8).reshape(1000, 28, 28)
    (ti, tl), (vi, vl) = split_validation(images, labels, 100, seed=3)
    assert len(vl) == 100 and len(tl) == 900
    assert np.bincount(vl, minlength=10).tolist() == [10] * 10
    (_, tl2), (_, vl2) = split_validation(images, labels, 100, seed=3)
    assert np.array_equal(vl, vl2) and np.array_equal(tl, tl2)
    (_, _), (vi3, _) = split_validation(images, labels, 100, seed=4)
    assert not np.array_equal(vi, vi3)


def test_zero_validation():
    labels = np.arange(20).astype(np.uint8) % 10
    images = np.zeros((20, 28, 28), np.uint8)
    (ti, tl), (vi, vl) = split_validation(images, labels, 0, seed=0)
    assert len(tl) == 20 and len(vl) == 0 and vi.shape == (0, 28, 28)


@pytest.mark.e2e
def test_stage_writes_the_store(workdir):
    assert run_stage(workdir, "download").returncode == 0
    proc = run_stage(workdir, "preprocess")
    assert proc.returncode == 0, proc.stderr
    prepared = workdir / "data" / "prepared"
    train, val, test = (load_split(prepared, s) for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (500, 100, 200)
    assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.int64
    assert train.images.shape[1:] == (28, 28)
    stats = json.loads((prepared / "stats.json").read_text())
    assert stats["counts"] == {"train": 500, "val": 100, "test": 200}
    expected = train.images.double().div(255)
    assert stats["mean"] == pytest.approx(expected.mean().item())
    assert stats["std"] == pytest.approx(expected.std(unbiased=False).item())
    assert load_stats(prepared).mean == stats["mean"]

    # Run again, the store is the same bytes: DVC sees no change, and nothing downstream
    # re-runs (torch.save to a path would name the zip's folder after a temporary file).
    first = {f.name: file_sha256(f) for f in prepared.iterdir()}
    assert run_stage(workdir, "preprocess").returncode == 0
    assert {f.name: file_sha256(f) for f in prepared.iterdir()} == first


def test_epoch_order_shards_are_disjoint_and_cover():
    full = epoch_order(103, seed=1, epoch=2)
    assert sorted(full.tolist()) == list(range(103))
    shards = [epoch_order(103, 1, 2, rank=r, world=3) for r in range(3)]
    assert sorted(torch.cat(shards).tolist()) == list(range(103))
    assert not torch.equal(epoch_order(103, 1, 3), full)


def test_augment_batch_crops_and_flips():
    x = torch.arange(2 * 28 * 28, dtype=torch.int64).remainder(251).to(torch.uint8)
    x = x.reshape(2, 28, 28)
    g = torch.Generator().manual_seed(0)
    out = augment_batch(x, crop_padding=0, hflip=True, generator=g)
    for a, b in zip(out, x, strict=True):
        assert torch.equal(a, b) or torch.equal(a, b.flip(-1))
    out = augment_batch(x, crop_padding=2, hflip=False, generator=torch.Generator().manual_seed(1))
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for a, p in zip(out, padded, strict=True):
        assert any(torch.equal(a, p[i:i + 28, j:j + 28]) for i in range(5) for j in range(5))


def test_erase_batch_puts_one_rectangle_of_noise_in_the_chosen_images():
    n = 4000
    x = torch.zeros(n, 28, 28, dtype=torch.uint8)
    out = erase_batch(x, 0.5, (0.1, 0.3), (0.5, 2.0), torch.Generator().manual_seed(0))
    changed = out != 0
    hit = changed.flatten(1).any(1)
    assert 0.45 < hit.float().mean().item() < 0.55
    for img in changed[hit][:200]:
        rows, cols = img.any(1).nonzero().flatten(), img.any(0).nonzero().flatten()
        h, w = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
        # the noise lies in one axis-aligned rectangle of about the drawn size
        box = out.new_zeros(28, 28, dtype=torch.bool)
        box[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1] = True
        assert not (img & ~box).any()
        assert 0.08 * 784 <= h * w <= 0.33 * 784 and 0.3 <= h / w <= 3.0
    # noise is uniform over 0..255, and untouched images stay as they were
    assert torch.equal(out[~hit], x[~hit])
    assert 100 < out[changed].float().mean().item() < 155
    assert torch.equal(erase_batch(x, 0.0, (0.1, 0.3), (0.5, 2.0),
                                   torch.Generator().manual_seed(0)), x)


def test_train_batches_draw_nothing_for_augmentations_that_are_off():
    from fmnist.batching import train_batches
    from fmnist.data import Split
    split = Split(torch.randint(0, 256, (64, 28, 28), dtype=torch.uint8),
                  torch.zeros(64, dtype=torch.int64))
    order = torch.arange(64)

    def first(aug) -> torch.Tensor:
        return next(train_batches(split, 64, order, None, aug,
                                  torch.Generator().manual_seed(3)))[0]

    flip = first(augment(crop_padding=0, hflip=True))
    flip_erase = first(augment(crop_padding=0, hflip=True, erase=1.0))
    # the flips are the same draws with erasing on; erasing changes only some pixels
    same = flip == flip_erase
    assert 0 < (~same).sum() < same.sum()
    assert torch.equal(first(augment(crop_padding=0, hflip=False)), to_input(split.images, None))


@pytest.mark.parametrize("field,value", [("erase_area", (0.0, 0.3)), ("erase_area", (0.3, 0.2)),
                                         ("erase_area", (0.2, 1.5)), ("erase_ratio", (-1, 2)),
                                         ("erase_ratio", (3.0, 2.0)), ("erase", 1.5)])
def test_augment_rejects_bad_erasing_params(field, value):
    from pydantic import ValidationError
    with pytest.raises(ValidationError):
        augment(crop_padding=0, hflip=False, **{field: value})


def test_augment_erase_ratio_may_exceed_one_but_area_may_not():
    aug = augment(crop_padding=0, hflip=False, erase_area=[0.1, 1.0], erase_ratio=[0.5, 5.0])
    assert aug.erase_area == [0.1, 1.0] and aug.erase_ratio == [0.5, 5.0]


def test_to_input_normalizes():
    from fmnist.data import Stats
    x = torch.tensor([[[0, 255]]], dtype=torch.uint8).expand(1, 28, 2)
    out = to_input(x, Stats(0.5, 0.25))
    assert out.shape == (1, 1, 28, 2)
    assert out[0, 0, 0].tolist() == pytest.approx([-2.0, 2.0])
    assert to_input(x, None)[0, 0, 0].tolist() == pytest.approx([0.0, 1.0])
