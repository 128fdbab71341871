"""Data-parallel training under torchrun: 2 CPU processes with gloo on 127.0.0.1."""

import json
import subprocess

import pytest
import torch

from tests.support import (
    PY,
    assert_one_line_error,
    copy_workdir,
    free_port,
    run_stage,
    set_params,
    state_hash,
    weights_hash,
)
from tools import ROOT

EPOCHS = 3


# 500 training images, an easy task, lr high enough to learn it in a few epochs
LEARNABLE = {"train_lenet": {"epochs": EPOCHS, "batch_size": 32, "lr": 0.01,
                             "augment": {"crop_padding": 0, "hflip": False}}}


@pytest.fixture
def prepared(prepared):
    set_params(prepared, LEARNABLE)
    return prepared


@pytest.fixture(scope="module")
def reference(prepared_template, tmp_path_factory):
    """One uninterrupted 2-process run through torchrun, shared by this module's tests:
    its work folder and what each rank recorded."""
    tmp = tmp_path_factory.mktemp("ddp")
    wd = copy_workdir(prepared_template, tmp / "wd")
    set_params(wd, LEARNABLE)
    return wd, torchrun(wd, tmp / "ref", "--state-per-rank")


def torchrun(wd, out, *extra, nproc=2, check=True):
    cmd = [PY, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--nnodes=1",
           "--master_addr=127.0.0.1", f"--master_port={free_port()}",
           "tests/ddp_worker.py", str(wd), str(out), *extra]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    if not check:
        return proc
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(nproc)]


def test_two_ranks_shard_sync_and_learn(reference, prepared):
    _, ranks = reference
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
    single = run_stage(prepared, "train-lenet")
    assert single.returncode == 0, single.stderr
    single_acc = json.loads((prepared / "models/lenet/meta.json").read_text())
    single_acc = single_acc["final"]["val_accuracy"]
    ddp_acc = ranks[0]["meta"]["final"]["val_accuracy"]
    assert single_acc > 0.8
    assert abs(ddp_acc - single_acc) <= 0.05, (ddp_acc, single_acc)


def test_resume_agrees_when_only_rank_0_has_the_state(reference, prepared, tmp_path):
    _, ref = reference
    out = tmp_path / "run"
    stopped = torchrun(prepared, out, "--state-per-rank", "--stop-after", "1", check=False)
    assert stopped.returncode != 0
    assert (out / "state0.pt").exists() and not (out / "state1.pt").exists()
    assert torch.load(out / "state0.pt", weights_only=True)["epoch"] == 1
    ranks = torchrun(prepared, out, "--state-per-rank")
    # both ranks resumed after epoch 1 (rank 1 never saw a file) and ended in step
    assert [r["epochs_run"] for r in ranks] == [[1, 2], [1, 2]]
    assert state_hash(ranks[0]["weights"]) == state_hash(ranks[1]["weights"])
    assert state_hash(ranks[0]["weights"]) == state_hash(ref[0]["weights"])
    assert ranks[0]["meta"]["final"] == ref[0]["meta"]["final"]


def test_stage_launches_torchrun_itself_and_is_deterministic(reference, prepared):
    """The stage, asked for 2 processes, starts itself under torchrun; its weights are
    the reference run's bit for bit (another launch, the same numbers)."""
    _, ref = reference
    set_params(prepared, {"train_lenet": {"distributed": {"nproc": 2}},
                          "runtime": {"master_port": free_port()}})
    proc = run_stage(prepared, "train-lenet")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    meta = json.loads((prepared / "models/lenet/meta.json").read_text())
    assert meta["world_size"] == 2 and meta["final"] == ref[0]["meta"]["final"]
    assert weights_hash(prepared / "models/lenet/model.pt") == state_hash(ref[0]["weights"])


@pytest.mark.parametrize("updates, needles", [
    ({"batch_size": 33, "distributed": {"nproc": 2}},
     ["train_lenet.batch_size: 33 does not divide among 2 processes"]),
    ({"distributed": {"nproc": 2, "backend": "nccl"}, "device": "cpu"},
     ["train_lenet.distributed.backend: 'nccl' needs a CUDA device"]),
])
def test_launcher_misconfiguration_is_one_line_before_torchrun(prepared, updates, needles):
    set_params(prepared, {"train_lenet": updates, "runtime": {"master_port": free_port()}})
    proc = run_stage(prepared, "train-lenet")
    assert_one_line_error(proc, "params.yaml: ", *needles)
    assert "torch.distributed" not in proc.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_nccl_with_device_auto_on_a_cpu_machine(prepared):
    set_params(prepared, {"train_lenet": {"distributed": {"nproc": 2, "backend": "nccl"},
                                          "device": "auto"},
                          "runtime": {"master_port": free_port()}})
    proc = run_stage(prepared, "train-lenet")
    assert_one_line_error(proc, "'nccl' needs a CUDA device")


def test_a_busy_rendezvous_port_is_one_line_naming_it(prepared):
    import socket
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        set_params(prepared, {"train_lenet": {"distributed": {"nproc": 2}},
                              "runtime": {"master_port": port}})
        proc = run_stage(prepared, "train-lenet")
    assert_one_line_error(proc, f"runtime.master_port: port {port} at 127.0.0.1 is in use")


def test_a_node_waiting_for_its_peers_says_so_and_gives_up_in_one_line(prepared):
    """Node 0 of 2, the other never started: it says at once what it waits for, and
    after runtime.rendezvous_timeout it ends with one line."""
    set_params(prepared, {"train_lenet": {"distributed": {"nproc": 1, "nnodes": 2}},
                          "runtime": {"master_port": free_port(), "rendezvous_timeout": 5}})
    proc = run_stage(prepared, "train-lenet")
    assert proc.stdout.startswith("node 0: waiting for 2 nodes to meet at 127.0.0.1:"), \
        proc.stdout
    assert_one_line_error(proc, "no rendezvous at 127.0.0.1:", "within 5 s")
