"""DVCLive as the training stages use it: the latest epoch's metrics, nothing else."""

import json

from fmnist.train import log_live, open_live


def test_live_writes_the_latest_epoch_and_nothing_else(tmp_path, monkeypatch):
    """metrics.json holds the latest epoch (validation only where a run has it), with
    no time, host or path in it; DVCLive writes no dvc.yaml, no plots, no report, and
    posts nothing to DVC Studio without a token."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DVC_STUDIO_TOKEN", raising=False)
    monkeypatch.delenv("STUDIO_TOKEN", raising=False)
    live = open_live(tmp_path / "live", resuming=False)
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

    # with a validation split, its values too; a resumed run logs its epochs again
    live = open_live(tmp_path / "live", resuming=True)
    log_live(live, {**rows[1], "val_loss": 0.7, "val_accuracy": 0.6})
    summary = json.loads((tmp_path / "live/metrics.json").read_text())
    assert summary["val"] == {"loss": 0.7, "accuracy": 0.6} and summary["epoch"] == 2
