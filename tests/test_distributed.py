"""Data-parallel training under torchrun: 2 CPU processes with gloo on 127.0.0.1."""

import json
import subprocess

import pytest
import torch
from conftest import PY, free_port, run_stage, set_params, state_hash, weights_hash

from fmnist.smoke import ROOT

EPOCHS = 3


@pytest.fixture
def prepared(prepared):
    # 500 training images, an easy task, lr high enough to learn it in a few epochs
    set_params(prepared, {"train_lenet": {"epochs": EPOCHS, "batch_size": 32, "lr": 0.01,
                                         "augment": {"crop_padding": 0, "hflip": False}}})
    return prepared


def torchrun(wd, out, nproc=2):
    cmd = [PY, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--nnodes=1",
           "--master_addr=127.0.0.1", f"--master_port={free_port()}",
           "tests/ddp_worker.py", str(wd), str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(nproc)]


def test_two_ranks_shard_sync_and_learn(prepared, tmp_path):
    ranks = torchrun(prepared, tmp_path / "ddp")
    n_train = 500
    assert [r["world"] for r in ranks] == [2, 2]
    for epoch in range(EPOCHS):
        a, b = ranks[0]["seen"][epoch], ranks[1]["seen"][epoch]
        assert len(a) == len(b) == n_train // 2
        assert not set(a) & set(b), "ranks saw overlapping samples"
        assert sorted(a + b) == list(range(n_train)), "the ranks did not cover the epoch"
    assert ranks[0]["seen"][0] != ranks[0]["seen"][1], "every epoch must reshuffle"
    assert state_hash(ranks[0]["weights"]) == state_hash(ranks[1]["weights"])

    # Same global batch and lr in one process: accuracy matches within the tolerance.
    single = run_stage(prepared, "stages/train.py", "lenet")
    assert single.returncode == 0, single.stderr
    single_acc = json.loads((prepared / "models/lenet/meta.json").read_text())
    single_acc = single_acc["final"]["val_accuracy"]
    ddp_acc = ranks[0]["meta"]["final"]["val_accuracy"]
    assert single_acc > 0.8
    assert abs(ddp_acc - single_acc) <= 0.05, (ddp_acc, single_acc)


def test_stage_launches_torchrun_itself_and_is_deterministic(prepared):
    port = free_port()
    set_params(prepared, {"train_lenet": {"epochs": 1, "resume": False, "distributed": {
        "nproc": 2, "master_port": port}}})
    hashes = []
    for _ in range(2):
        proc = run_stage(prepared, "stages/train.py", "lenet")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        meta = json.loads((prepared / "models/lenet/meta.json").read_text())
        assert meta["world_size"] == 2
        hashes.append(weights_hash(prepared / "models/lenet/model.pt"))
    assert hashes[0] == hashes[1]


def test_batch_must_divide_among_ranks(prepared):
    set_params(prepared, {"train_lenet": {"batch_size": 33, "distributed": {
        "nproc": 2, "master_port": free_port()}}})
    proc = run_stage(prepared, "stages/train.py", "lenet")
    assert proc.returncode != 0
    assert "train_lenet.batch_size: 33 does not divide among 2 processes" in proc.stderr
