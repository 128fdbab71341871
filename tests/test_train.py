"""Training: determinism, checkpoints, weight averaging, kill and resume, the resume
fingerprint, non-finite losses, bf16. Every test here trains (the slower tier)."""

import io
import json
import shutil
import signal
import subprocess
import time

import pytest
import torch

from fmnist.checkpoint import load_checkpoint
from fmnist.common import UserError
from fmnist.data import load_split, load_stats
from fmnist.inference import loss_and_accuracy, predict_logits
from fmnist.train import Trainer
from tests.support import (
    assert_one_line_error,
    copy_workdir,
    file_sha256,
    run_stage,
    run_stages,
    run_train,
    run_train_interrupted,
    set_params,
    weights_hash,
)
from tools.repo import stage_argv

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("name", ["lenet", "alexnet"])
def test_deterministic(prepared, name):
    run_train(prepared, name, "a", epochs=2)
    run_train(prepared, name, "b", epochs=2)
    ha = weights_hash(prepared / "a/model/model.pt")
    assert ha == weights_hash(prepared / "b/model/model.pt")
    # the same file too, byte for byte, so DVC's hash of it is reproducible
    assert file_sha256(prepared / "a/model/model.pt") == file_sha256(prepared / "b/model/model.pt")
    run_train(prepared, name, "c", epochs=2, seed=2)
    assert weights_hash(prepared / "c/model/model.pt") != ha


def test_checkpoint_and_meta(prepared):
    meta = run_train(prepared, "alexnet", "a")
    model, meta2 = load_checkpoint(prepared / "a/model", "alexnet")
    assert meta2["trainable_params"] == meta["trainable_params"] == sum(
        p.numel() for p in model.parameters())
    assert meta2["arch"]["channels"] == [4, 8, 8, 8, 8] and meta2["model"] == "alexnet"
    assert meta2["params"]["lr"] == meta["params"]["lr"]
    curves = (prepared / "a/curves.tsv").read_text().splitlines()
    assert curves[0].split("\t")[:5] == ["epoch", "train_loss", "train_accuracy", "val_loss",
                                         "val_accuracy"]
    assert len(curves) == 2


def test_learns_the_synthetic_task(prepared):
    meta = run_train(prepared, "lenet", "a", epochs=4, lr=0.01)
    assert meta["final"]["val_accuracy"] > 0.8


def test_checkpoint_that_does_not_fit(prepared):
    run_train(prepared, "alexnet", "a")
    meta_path = prepared / "a/model/meta.json"
    meta_path.write_text(meta_path.read_text().replace('"fc": 32', '"fc": 64'))
    with pytest.raises(UserError, match="does not fit model 'alexnet'"):
        load_checkpoint(prepared / "a/model", "alexnet")
    with pytest.raises(UserError, match=r"run `dvc repro train-lenet`"):
        load_checkpoint(prepared / "missing", "lenet")


def test_fp16_on_cpu_is_refused(prepared):
    # device: cpu is refused when params load, in one line naming the key
    set_params(prepared, {"train_lenet": {"amp": "fp16", "device": "cpu"}})
    proc = run_stage(prepared, "train-lenet")
    assert_one_line_error(proc, "params.yaml: train_lenet.amp: 'fp16' needs a CUDA device")
    # device: auto on a machine without CUDA is refused once the device is known
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="amp: 'fp16' needs a CUDA device"):
            run_train(prepared, "lenet", "a", amp="fp16", device="auto")


# ---------------------------------------------------------------- weight averaging


def test_ema_saves_and_validates_the_moving_average_of_the_steps(prepared, monkeypatch):
    decay = 0.9
    raw: list[dict[str, torch.Tensor]] = []
    step = Trainer.step

    def recording_step(self, x, y):
        out = step(self, x, y)
        raw.append({k: v.detach().clone() for k, v in self.model.state_dict().items()})
        return out

    monkeypatch.setattr(Trainer, "step", recording_step)
    meta = run_train(prepared, "lenet", "a", epochs=2, ema=decay)
    assert len(raw) > 4
    expected = dict(raw[0])  # the average starts as a copy of the first step's weights
    for weights in raw[1:]:
        expected = {k: expected[k] + (1 - decay) * (weights[k] - expected[k]) for k in weights}
    saved = torch.load(prepared / "a/model/model.pt", weights_only=True)
    assert saved.keys() == expected.keys()
    for k in saved:
        torch.testing.assert_close(saved[k], expected[k])
    assert not torch.allclose(saved["classifier.5.weight"], raw[-1]["classifier.5.weight"])

    model, _ = load_checkpoint(prepared / "a/model", "lenet")
    val = load_split(prepared / "data/prepared", "val")
    logits = predict_logits(model, val, load_stats(prepared / "data/prepared"), 1000,
                            torch.device("cpu"))
    assert meta["final"]["val_accuracy"] == loss_and_accuracy(logits, val.labels)[1]


def test_interrupted_ema_run_resumes_to_the_uninterrupted_weights(prepared):
    run_train(prepared, "lenet", "ref", epochs=3, ema=0.95)
    state = run_train_interrupted(prepared, "lenet", "b", epochs=3, ema=0.95)
    assert state["epoch"] == 1 and "average" in state
    run_train(prepared, "lenet", "b", epochs=3, ema=0.95)
    assert (weights_hash(prepared / "b/model/model.pt")
            == weights_hash(prepared / "ref/model/model.pt"))


# ---------------------------------------------------------------- kill and resume

SLOW = {"epochs": 3, "batch_size": 16,
        "arch": {"channels": [16, 32, 32, 32, 32], "fc": 256}}


def kill_after_first_epoch(wd) -> None:
    state = wd / "state/alexnet/last.pt"
    proc = subprocess.Popen(stage_argv("train-alexnet"), cwd=wd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not state.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = torch.load(state, weights_only=True)
    assert saved["epoch"] < SLOW["epochs"], "the run finished before it could be killed"
    out = wd / "models/alexnet"
    assert not out.exists() or not any(out.iterdir()), "a killed run left outputs"


@pytest.fixture(scope="module")
def slow_template(prepared_template, tmp_path_factory):
    """The SLOW AlexNet trained once, uninterrupted, by its stage: the work folder (its
    params set to SLOW), the weights' hash and the curves."""
    wd = copy_workdir(prepared_template, tmp_path_factory.mktemp("slow") / "wd")
    set_params(wd, {"train_alexnet": SLOW})
    run_stages(wd, "train-alexnet")
    return (wd, weights_hash(wd / "models/alexnet/model.pt"),
            (wd / "metrics/curves/alexnet.tsv").read_text())


def live_metrics(wd):
    return (wd / "metrics/live/alexnet/metrics.json").read_text()


@pytest.fixture
def slow(slow_template, tmp_path):
    """A copy of ``slow_template``'s folder without its model and resume state."""
    template, ref_hash, ref_curves = slow_template
    wd = copy_workdir(template, tmp_path / "wd")
    shutil.rmtree(wd / "models")
    shutil.rmtree(wd / "state")
    shutil.rmtree(wd / "metrics/live")
    return wd, ref_hash, ref_curves


def test_resume_after_kill_gives_the_uninterrupted_weights(slow, slow_template):
    prepared, ref_hash, ref_curves = slow
    kill_after_first_epoch(prepared)
    proc = run_stage(prepared, "train-alexnet")
    assert proc.returncode == 0, proc.stderr
    assert "resuming after epoch 1 of 3" in proc.stdout
    assert weights_hash(prepared / "models/alexnet/model.pt") == ref_hash
    # one row per epoch, as the uninterrupted run's; DVCLive's latest epoch the same
    assert (prepared / "metrics/curves/alexnet.tsv").read_text() == ref_curves
    assert live_metrics(prepared) == live_metrics(slow_template[0])


def test_changed_param_starts_fresh(slow):
    prepared, _, _ = slow
    kill_after_first_epoch(prepared)
    set_params(prepared, {"train_alexnet": {"lr": 0.002}})
    proc = run_stage(prepared, "train-alexnet")
    assert proc.returncode == 0, proc.stderr
    assert "made from other params; training from scratch" in proc.stdout
    assert "resuming" not in proc.stdout


def test_resume_false_ignores_state(slow):
    prepared, fresh, _ = slow
    # A state that *would* be resumed (same fingerprint, after epoch 1), with weights
    # edited so that resuming it gives other final weights: resume: false must not use it.
    state_path = prepared / "state/alexnet/last.pt"
    kill_after_first_epoch(prepared)
    state = torch.load(state_path, weights_only=True)
    state["model"] = {k: v * 0.5 for k, v in state["model"].items()}
    torch.save(state, state_path)
    set_params(prepared, {"runtime": {"resume": False}})
    proc = run_stage(prepared, "train-alexnet")
    assert proc.returncode == 0 and "resuming" not in proc.stdout
    assert weights_hash(prepared / "models/alexnet/model.pt") == fresh
    # and the same state with resume: true is resumed (so the edit above matters)
    set_params(prepared, {"runtime": {"resume": True}})
    torch.save(state, state_path)
    shutil.rmtree(prepared / "models")
    proc = run_stage(prepared, "train-alexnet")
    assert proc.returncode == 0, proc.stderr
    assert "resuming after epoch 1 of 3" in proc.stdout
    assert weights_hash(prepared / "models/alexnet/model.pt") != fresh


@pytest.fixture(scope="module")
def lenet_template(prepared_template, tmp_path_factory):
    """The `train-lenet` stage run once from scratch: its model and its resume state."""
    wd = copy_workdir(prepared_template, tmp_path_factory.mktemp("lenet") / "wd")
    run_stages(wd, "train-lenet")
    return wd


@pytest.fixture
def lenet_trained(lenet_template, tmp_path):
    return copy_workdir(lenet_template, tmp_path / "wd")


def test_inconsistent_state_is_ignored(lenet_trained):
    """A state whose fingerprint fits but whose content does not (here: an epoch count
    that disagrees with its scheduler) starts from scratch instead of failing later."""
    prepared = lenet_trained
    fresh = weights_hash(prepared / "models/lenet/model.pt")
    state_path = prepared / "state/lenet/last.pt"
    state = torch.load(state_path, weights_only=True)
    state["epoch"] = 0 if state["epoch"] > 0 else 1
    torch.save(state, state_path)
    shutil.rmtree(prepared / "models")
    proc = run_stage(prepared, "train-lenet")
    assert proc.returncode == 0, proc.stderr
    assert "warning: lenet:" in proc.stdout and "training from scratch" in proc.stdout
    assert weights_hash(prepared / "models/lenet/model.pt") == fresh


class _RunsCode:
    def __reduce__(self):
        return (print, ("pickled code ran",))


BAD_STATES = {
    "truncated": lambda good: good[: len(good) // 2],
    "empty": lambda good: b"",
    "not a dict": lambda good: _saved([1, 2, 3]),
    "runs code": lambda good: _saved({"x": _RunsCode()}),
}


def _saved(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


@pytest.mark.parametrize("kind", sorted(BAD_STATES))
def test_unreadable_state_is_ignored_and_replaced(lenet_trained, kind):
    prepared = lenet_trained
    fresh = weights_hash(prepared / "models/lenet/model.pt")
    state_path = prepared / "state/lenet/last.pt"
    state_path.write_bytes(BAD_STATES[kind](state_path.read_bytes()))
    shutil.rmtree(prepared / "models")
    proc = run_stage(prepared, "train-lenet")
    assert proc.returncode == 0, proc.stderr
    assert "pickled code ran" not in proc.stdout + proc.stderr
    warnings = [line for line in proc.stdout.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "training from scratch" in warnings[0], proc.stdout
    assert "Traceback" not in proc.stderr
    assert weights_hash(prepared / "models/lenet/model.pt") == fresh
    assert torch.load(state_path, weights_only=True)["epoch"] == 1  # replaced by a good one


# ---------------------------------------------------------------- non-finite training


def test_non_finite_loss_stops_at_once_and_writes_no_model(prepared, monkeypatch):
    step = Trainer.step
    calls = []

    def poisoned(self, x, y):
        loss, logits = step(self, x, y)
        calls.append(1)
        return (loss * float("nan") if len(calls) == 3 else loss), logits

    monkeypatch.setattr(Trainer, "step", poisoned)
    with pytest.raises(UserError, match=r"lenet: the training loss became nan in epoch 1, "
                                        r"by step 3; stopped, nothing written.*lr"):
        run_train(prepared, "lenet", "a", epochs=2)
    assert len(calls) == 3  # at once: no step after the bad one
    assert not (prepared / "a/model").exists()


# ---------------------------------------------------------------- bf16 on the CPU


@pytest.mark.parametrize("name", ["lenet", "alexnet"])
def test_bf16_is_deterministic_and_resumes_to_the_same_weights(prepared, name):
    run_train(prepared, name, "a", epochs=2, amp="bf16", device="cpu")
    run_train(prepared, name, "b", epochs=2, amp="bf16", device="cpu")
    ref = weights_hash(prepared / "a/model/model.pt")
    assert weights_hash(prepared / "b/model/model.pt") == ref
    fp32 = run_train(prepared, name, "f", epochs=2, amp="none", device="cpu")
    assert weights_hash(prepared / "f/model/model.pt") != ref  # bf16 really ran
    assert fp32["params"]["amp"] == "none"
    state = run_train_interrupted(prepared, name, "c", epochs=2, amp="bf16", device="cpu")
    assert state["epoch"] == 1
    run_train(prepared, name, "c", epochs=2, amp="bf16", device="cpu")
    assert weights_hash(prepared / "c/model/model.pt") == ref


@pytest.mark.parametrize("flags, ran", [(["avx2", "avx512f", "avx512_bf16"], "bf16"),
                                        (["avx2", "avx512f"], "none")])
def test_the_precision_that_ran_is_recorded(prepared, monkeypatch, flags, ran):
    import fmnist.runtime as runtime
    monkeypatch.setattr(runtime, "cpu_flags", lambda: flags)
    meta = run_train(prepared, "lenet", "a", amp="auto", device="cpu")
    assert meta["params"]["amp"] == ran
    timings = json.loads((prepared / "a/timings.json").read_text())
    assert timings["precision"] == ran
    assert timings["environment"]["cpu_flags"] == flags


def test_an_edit_to_any_file_of_the_training_code_invalidates_the_resume_state(
        prepared, tmp_path, monkeypatch, capsys):
    """The fingerprint's code is the import closure of the training loop, so an edit to
    runtime.py (autocast, determinism) or checkpoint.py counts as much as one to
    train.py: the saved state is then ignored, and the run trains from scratch."""
    from fmnist import closure
    src = tmp_path / "src"
    shutil.copytree(closure.SRC / "fmnist", src / "fmnist",
                    ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(closure, "SRC", src)  # the fingerprint reads this copy's files
    for edited in (None, "runtime.py", "checkpoint.py"):
        tag = edited or "unedited"
        assert run_train_interrupted(prepared, "lenet", tag, epochs=2)["epoch"] == 1
        if edited:
            with open(src / "fmnist" / edited, "a") as f:
                f.write("\n# an edit\n")
        capsys.readouterr()
        run_train(prepared, "lenet", tag, epochs=2)
        out = capsys.readouterr().out
        if edited is None:  # the control: the same code resumes
            assert "resuming after epoch 1 of 2" in out, out
        else:
            assert "made from other code; training from scratch" in out, out
            assert "resuming" not in out
