"""DVCLive as the training stages use it: the latest epoch's metrics, nothing else."""

import json

import pytest

from fmnist.train import LiveMetrics, log_live, open_live


def test_live_writes_the_latest_epoch_and_nothing_else(tmp_path, monkeypatch):
    """metrics.json holds the latest epoch (validation only where a run has it), with
    no time, host or path in it; DVCLive writes no dvc.yaml, no plots, no report, and
    posts nothing to DVC Studio without a token."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DVC_STUDIO_TOKEN", raising=False)
    monkeypatch.delenv("STUDIO_TOKEN", raising=False)
    live = open_live(tmp_path / "live")
    assert not live._dvc_studio_config  # posting is off
    rows = [{"epoch": e, "train_loss": 1.0 / e, "train_accuracy": 0.5 + e / 10, "lr": 0.1 / e,
             "seconds": 1.5} for e in (1, 2, 3)]
    for row in rows:
        log_live(live, row)
        summary = json.loads((tmp_path / "live/metrics.json").read_text())
        assert summary == {"epoch": row["epoch"], "step": row["epoch"] - 1, "lr": row["lr"],
                           "train": {"loss": row["train_loss"],
                                     "accuracy": row["train_accuracy"]}}
    live.end()
    assert sorted(p.name for p in (tmp_path / "live").iterdir()) == ["metrics.json"]
    assert not (tmp_path / "dvc.yaml").exists()

    # with a validation split, its values too
    live = open_live(tmp_path / "live")
    log_live(live, {**rows[1], "val_loss": 0.7, "val_accuracy": 0.6})
    summary = json.loads((tmp_path / "live/metrics.json").read_text())
    assert summary["val"] == {"loss": 0.7, "accuracy": 0.6} and summary["epoch"] == 2


ROWS = [{"epoch": e, "train_loss": 1.0 / e, "train_accuracy": 0.5 + e / 10, "lr": 0.1 / e,
         "seconds": 1.5} for e in (1, 2, 3)]


@pytest.mark.parametrize("damage", [b"", b'{"step": 0, "tra', b"\xff\xfe"])
def test_a_resumed_run_rebuilds_live_metrics_whatever_a_kill_left(tmp_path, monkeypatch,
                                                                  damage):
    """A kill during DVCLive's write can leave metrics.json empty or cut: the resumed
    run does not read it, it rebuilds it from its own history, to the bytes an
    uninterrupted run writes."""
    monkeypatch.chdir(tmp_path)
    whole = LiveMetrics(tmp_path / "whole", [])
    for row in ROWS:
        whole.log(row)
    whole.end()
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut/metrics.json").write_bytes(damage)
    resumed = LiveMetrics(tmp_path / "cut", ROWS[:2])
    resumed.log(ROWS[2])
    resumed.end()
    assert (tmp_path / "cut/metrics.json").read_bytes() == \
        (tmp_path / "whole/metrics.json").read_bytes()


def test_a_failed_run_puts_back_the_previous_live_metrics(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "live").mkdir()
    (tmp_path / "live/metrics.json").write_text('{"step": 39}\n')
    live = LiveMetrics(tmp_path / "live", [])
    live.log(ROWS[0])
    assert json.loads((tmp_path / "live/metrics.json").read_text())["step"] == 0
    live.put_back()
    assert (tmp_path / "live/metrics.json").read_text() == '{"step": 39}\n'


def test_a_training_run_that_fails_leaves_the_previous_live_metrics(prepared, monkeypatch):
    """A run stopped in its first epoch (a Ctrl-C here), when DVCLive has already
    started its own file, puts that file back as the previous run left it: the live
    metrics still describe the model beside them."""
    from fmnist import resume as resume_module
    from fmnist.models import spec
    from fmnist.runtime import setup_runtime
    from fmnist.train import RunPaths, train

    wd = prepared
    live = wd / "live"
    live.mkdir()
    (live / "metrics.json").write_text('{"step": 39}\n')
    save = resume_module.save_torch

    def save_then_die(obj, path):  # the first epoch's resume state, then Ctrl-C
        save(obj, path)
        died.append((live / "metrics.json").exists())  # DVCLive started its own file
        raise KeyboardInterrupt

    died: list[bool] = []

    monkeypatch.setattr(resume_module, "save_torch", save_then_die)
    params = spec("lenet").load_params(wd / "params.yaml")
    paths = RunPaths(wd / "data/prepared", wd / "out", wd / "curves.tsv", wd / "state.pt",
                     live=live)
    with pytest.raises(KeyboardInterrupt):
        train("lenet", params, paths, setup_runtime(params, spec("lenet").section))
    assert died == [False]
    assert (live / "metrics.json").read_text() == '{"step": 39}\n'
