"""Faults, round three: outputs swapped in whole (sets included), paths checked before the
work, what is loaded validated, strict JSON and YAML, recovery said where DVC removed
outputs, one line from inside torchrun, and the installed stack equal to the lock."""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import pytest

from fmnist.common import UserError
from fmnist.data import load_split, read_stats
from fmnist.files import (
    JOURNAL_SUFFIX,
    OutputSet,
    atomic_dir,
    load_torch,
    save_torch,
    sweep,
    write_json,
)
from fmnist.params import read_params
from fmnist.stack import LOCK_FILE, differences
from tests.support import PY, assert_one_line_error, free_port, run_stage, set_params
from tools import ROOT


def strays(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.name.endswith((".part", ".old", JOURNAL_SUFFIX)))


def snapshot(root: Path, *dirs: str) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for d in dirs
            for p in sorted((root / d).rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- swaps (fast)

# A writer killed (os._exit, as kill -9) at the worst moment: after the first of its
# swaps. Run in a subprocess, since it really dies.
KILLED_MID_COMMIT = """
import os, sys
from pathlib import Path
from fmnist import files
root = Path(sys.argv[1])
calls = []
real = files.swap_in
def dying(tmp, path, **kw):
    if calls:
        os._exit(9)
    calls.append(path)
    return real(tmp, path, **kw)
files.swap_in = dying
with files.OutputSet(root / ".set.commit.json",
                     [root / "a.json", root / "b.json", root / "figs"]) as out:
    for name in ("a.json", "b.json"):
        out.file(root / name).write_text("new " + name)
    d = out.dir(root / "figs")
    (d / "x.png").write_text("new x")
"""


def test_a_set_killed_while_swapping_is_completed_by_the_next_run(tmp_path):
    for name in ("a.json", "b.json"):
        (tmp_path / name).write_text("old " + name)
    (tmp_path / "figs").mkdir()
    (tmp_path / "figs" / "x.png").write_text("old x")
    proc = subprocess.run([PY, "-c", KILLED_MID_COMMIT, str(tmp_path)], cwd=ROOT)
    assert proc.returncode == 9
    # killed mid-set: a mix, and the journal that says how to finish
    assert (tmp_path / "a.json").read_text() == "new a.json"
    assert (tmp_path / "b.json").read_text() == "old b.json"
    assert (tmp_path / ".set.commit.json").exists()
    OutputSet(tmp_path / ".set.commit.json",  # the next run's first step
              [tmp_path / "a.json", tmp_path / "b.json", tmp_path / "figs"])
    assert (tmp_path / "b.json").read_text() == "new b.json"
    assert (tmp_path / "figs" / "x.png").read_text() == "new x"
    assert strays(tmp_path) == []


# Killed after a folder's exchange, before the old folder (now at the temporary name)
# is deleted: the next run must not take it for the new one
KILLED_AFTER_EXCHANGE = """
import os, sys
from pathlib import Path
from fmnist import files
root = Path(sys.argv[1])
real = files._remove
def dying(path):
    if path.name.startswith(".lenet."):
        os._exit(9)
    real(path)
files._remove = dying
with files.OutputSet(root / ".set.commit.json", [root / "lenet", root / "curves.tsv"]) as out:
    d = out.dir(root / "lenet")
    (d / "model.pt").write_text("new")
    out.file(root / "curves.tsv").write_text("new")
"""


def test_a_set_killed_after_a_folder_exchange_keeps_the_new_folder(tmp_path):
    (tmp_path / "lenet").mkdir()
    (tmp_path / "lenet" / "model.pt").write_text("old")
    (tmp_path / "curves.tsv").write_text("old")
    proc = subprocess.run([PY, "-c", KILLED_AFTER_EXCHANGE, str(tmp_path)], cwd=ROOT)
    assert proc.returncode == 9
    OutputSet(tmp_path / ".set.commit.json", [tmp_path / "lenet", tmp_path / "curves.tsv"])
    assert (tmp_path / "lenet" / "model.pt").read_text() == "new"
    assert (tmp_path / "curves.tsv").read_text() == "new"
    assert strays(tmp_path) == []


def test_a_set_that_fails_writes_nothing(tmp_path):
    (tmp_path / "a.json").write_text("old")
    with pytest.raises(RuntimeError), \
            OutputSet(tmp_path / ".j", [tmp_path / "a.json", tmp_path / "figs"]) as out:
        out.file(tmp_path / "a.json").write_text("new")
        out.dir(tmp_path / "figs")
        raise RuntimeError("the second model is unreadable")
    assert (tmp_path / "a.json").read_text() == "old" and not (tmp_path / "figs").exists()
    assert strays(tmp_path) == []


def test_a_folder_is_swapped_in_one_step(tmp_path, monkeypatch):
    target = tmp_path / "lenet"
    target.mkdir()
    (target / "model.pt").write_text("old weights")
    (target / "meta.json").write_text("old meta")
    from fmnist import files
    renames = []
    real_replace = os.replace
    monkeypatch.setattr(files.os, "replace",
                        lambda a, b: (renames.append((a, b)), real_replace(a, b))[1])
    with atomic_dir(target) as tmp:
        (tmp / "model.pt").write_text("new weights")
        (tmp / "meta.json").write_text("new meta")
    # one exchange of the two folders (renameat2), not two renames with a gap between
    assert [r for r in renames if Path(r[1]) == target] == []
    assert {p.name: p.read_text() for p in target.iterdir()} == {
        "model.pt": "new weights", "meta.json": "new meta"}
    assert strays(tmp_path) == []


def test_leftovers_of_a_killed_writer_are_swept_and_a_live_ones_kept(tmp_path):
    target = tmp_path / "lenet"
    dead = subprocess.run([PY, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    (tmp_path / f".lenet.{dead}.abc.part").mkdir()             # a killed writer's folder
    (tmp_path / f".lenet.{dead}.abc.part" / "model.pt").write_text("half")
    (tmp_path / ".lenet.xyz123.part").write_text("old naming")   # no pid: an old run's
    live = subprocess.Popen([PY, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / f".lenet.{live.pid}.def.part").mkdir()      # a running writer's
        (tmp_path / ".lenet.old").mkdir()                       # a swap cut between renames
        (tmp_path / ".lenet.old" / "model.pt").write_text("previous")
        sweep(target)
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
            ["lenet", f".lenet.{live.pid}.def.part"])
        assert (target / "model.pt").read_text() == "previous"  # put back, not lost
    finally:
        live.kill()
        live.wait()


def test_json_is_strict_and_null_stands_for_what_is_not_finite(tmp_path):
    write_json(tmp_path / "m.json", {"val": {"loss": float("nan")}, "x": [1.0, float("inf")]})
    text = (tmp_path / "m.json").read_text()
    def refuse(name):
        raise ValueError(name)
    assert json.loads(text, parse_constant=refuse) == {"val": {"loss": None}, "x": [1.0, None]}


# ---------------------------------------------------------------- strict YAML (fast)


@pytest.mark.parametrize("text, needles", [
    ("train_lenet:\n  lr: 0.01\n  epochs: 3\n  lr: 0.5\n",
     ["line 4: duplicate key 'lr' (first at line 2)"]),
    ("a: &a [1, 2, 3]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a]\n"
     "c: [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\n", ["more than 16 aliases"]),
    ("evaluate:\n  tta: '" + "x" * 5000 + "\n", ["not valid YAML"]),
    ("a: {x: 1, x: 2}\n", ["line 1: duplicate key 'x'"]),
])
def test_params_yaml_is_read_strictly_in_one_short_line(tmp_path, text, needles):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(UserError) as err:
        read_params(path)
    message = str(err.value)
    assert "\n" not in message and len(message) < 300, message
    for needle in needles:
        assert needle in message


def test_merge_keys_still_work(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("base: &b {x: 1, y: 2}\nother:\n  <<: *b\n  y: 3\n")
    assert read_params(path)["other"] == {"x": 1, "y": 3}


def test_a_locked_package_that_is_missing_fails_the_install_check(tmp_path):
    from tools.lock import main
    lock = tmp_path / LOCK_FILE
    lock.write_text((ROOT / LOCK_FILE).read_text() + "zzz-not-there==1.0 \\\n"
                    "    --hash=sha256:" + "0" * 64 + "\n")
    assert main(["--check", "--allow-extra", "--lock", str(lock)]) == 1
    assert main(["--check", "--allow-extra", "--lock", str(ROOT / LOCK_FILE)]) == 0


# ---------------------------------------------------------------- loaded data (e2e)


def damage_split(prepared: Path, split: str, **changes) -> None:
    path = prepared / "data/prepared" / f"{split}.pt"
    obj = load_torch(path)
    obj.update(changes)
    save_torch(obj, path)


def test_prepared_data_is_validated_where_it_is_loaded(prepared):
    store = prepared / "data/prepared"
    labels = load_torch(store / "train.pt")["labels"].clone()
    labels[7] = 12
    damage_split(prepared, "train", labels=labels)
    with pytest.raises(UserError, match=r"train.pt: label 12 is outside 0..9: run `dvc repro "
                                        r"preprocess`"):
        load_split(store, "train")
    proc = run_stage(prepared, "train-lenet")  # the stage: one line, no traceback
    assert_one_line_error(proc, "label 12 is outside 0..9")

    damage_split(prepared, "train", labels=labels[:-1].clone().clamp(0, 9),
                 images=load_torch(store / "train.pt")["images"][:-1].clone())
    with pytest.raises(UserError, match="images where stats.json says"):
        load_split(store, "train")

    stats = json.loads((store / "stats.json").read_text())
    for std in (0, float("nan"), -1):
        (store / "stats.json").write_text(json.dumps({**stats, "std": std}))
        with pytest.raises(UserError, match="finite with std > 0"):
            read_stats(store)


def test_checkpoints_are_validated_where_they_are_loaded(evaluated):
    import shutil
    before = snapshot(evaluated, "metrics")
    # a complete AlexNet placed where the LeNet belongs
    shutil.rmtree(evaluated / "models/lenet")
    shutil.copytree(evaluated / "models/alexnet", evaluated / "models/lenet")
    proc = run_stage(evaluated, "evaluate")
    assert_one_line_error(proc, "models/lenet/meta.json describes a 'alexnet', not the "
                                "'lenet'", "dvc repro train-lenet")
    assert snapshot(evaluated, "metrics") == before
    # a model whose normalization cannot be applied
    meta_path = evaluated / "models/alexnet/meta.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "normalize": {"mean": 0.3, "std": 0}}))
    shutil.rmtree(evaluated / "models/lenet")
    proc = run_stage(evaluated, "evaluate", "--models", "alexnet", "--checkpoints",
                     "models/alexnet", "--curves", "metrics/curves/alexnet.tsv",
                     "--metrics", "metrics/alexnet.json",
                     "--confusion", "metrics/confusion/alexnet.csv")
    assert_one_line_error(proc, "normalize needs a finite mean and a finite std > 0")


def test_evaluate_writes_nothing_unless_every_model_loads(evaluated):
    (evaluated / "models/alexnet/model.pt").write_bytes(b"not a checkpoint")
    before = snapshot(evaluated, "metrics")
    proc = run_stage(evaluated, "evaluate")
    assert_one_line_error(proc, "models/alexnet/model.pt")
    # the first model's metrics, confusion data and figures were not rewritten
    assert snapshot(evaluated, "metrics") == before
    assert strays(evaluated) == []


# ---------------------------------------------------------------- training's outputs (e2e)


def test_an_output_that_cannot_be_written_stops_training_before_it_starts(prepared):
    (prepared / "blocker").write_text("a file where a folder must go")
    proc = run_stage(prepared, "train-lenet", "--out", "blocker/lenet")
    assert_one_line_error(proc, "cannot write blocker/lenet", "training lenet did not start")
    assert "epoch" not in proc.stdout
    assert not (prepared / "state").exists() and not (prepared / "metrics/curves").exists()


DISK_FULL_AT_THE_END = """
import errno, runpy, sys
from fmnist import checkpoint
def full(obj, path):
    raise OSError(errno.ENOSPC, "No space left on device", str(path))
checkpoint.save_torch = full
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_a_full_disk_at_the_end_is_one_line_and_leaves_the_old_outputs(prepared):
    proc = run_stage(prepared, "train-lenet")
    assert proc.returncode == 0, proc.stderr
    before = snapshot(prepared, "models", "metrics")
    set_params(prepared, {"train_lenet": {"lr": 0.02}, "runtime": {"resume": False}})
    from tools.repo import stage_argv
    argv = stage_argv("train-lenet")
    proc = subprocess.run([PY, "-c", DISK_FULL_AT_THE_END, *argv[1:]], cwd=prepared,
                          capture_output=True, text=True, timeout=300)
    assert_one_line_error(proc, "No space left on device", "is as it was")
    after = snapshot(prepared, "models", "metrics")
    after.pop("metrics/live/lenet/metrics.json", None)  # DVCLive's, written each epoch
    before.pop("metrics/live/lenet/metrics.json", None)
    assert after == before  # the model, its curves and timings: all the old run's
    assert strays(prepared) == []


# ---------------------------------------------------------------- DVC and torchrun (e2e)


def test_a_params_error_under_dvc_says_how_to_get_the_outputs_back(prepared):
    set_params(prepared, {"train_lenet": {"lr": -0.1}})
    from tools.repo import stage_argv
    proc = subprocess.run(stage_argv("train-lenet"), cwd=prepared, capture_output=True,
                          text=True, env={**os.environ, "DVC_STAGE": "train-lenet"})
    assert_one_line_error(proc, "train_lenet.lr", "`dvc checkout` restores them")
    proc = run_stage(prepared, "train-lenet")  # run directly: no such hint
    assert_one_line_error(proc, "train_lenet.lr")
    assert "dvc checkout" not in proc.stderr


def test_a_rank_that_fails_under_torchrun_ends_in_its_one_line(prepared):
    labels = load_torch(prepared / "data/prepared/train.pt")["labels"].clone()
    labels[3] = 10
    damage_split(prepared, "train", labels=labels)
    set_params(prepared, {"train_lenet": {"distributed": {"nproc": 2}},
                          "runtime": {"master_port": free_port()}})
    proc = run_stage(prepared, "train-lenet")
    assert_one_line_error(proc, "label 10 is outside 0..9")
    assert "ChildFailedError" not in proc.stderr and "torch.distributed" not in proc.stderr


# ---------------------------------------------------------------- the locked stack (fast)


def test_the_installed_stack_is_exactly_the_lock():
    """`make install` installs requirements.lock and nothing else (this suite runs in
    that environment)."""
    assert differences(ROOT / LOCK_FILE) == []
    lock = (ROOT / LOCK_FILE).read_text()
    pins = [line for line in lock.splitlines() if "==" in line and not line.startswith("#")]
    assert len(pins) > 150 and all("--hash=sha256:" in lock.split(p, 1)[1].split("\n", 2)[1]
                                    for p in pins[:20])
    assert "torch==2.14.1" in lock and "torchvision==0.29.1" in lock


def test_a_package_at_another_version_is_named(tmp_path):
    import re
    lock = re.sub(r"\nscipy==\S+", "\nscipy==0.0.1", (ROOT / LOCK_FILE).read_text())
    (tmp_path / LOCK_FILE).write_text(lock.replace("\nsix==", "\nsix-not-installed=="))
    lines = differences(tmp_path / LOCK_FILE)
    assert any(line.startswith("scipy: locked 0.0.1, installed ") for line in lines)
    assert "six-not-installed: locked" in " ".join(lines)
    assert any(line.startswith("six: ") and "not in" in line for line in lines)


def test_nan_is_never_written_to_meta_json(prepared):
    """The committed refit has no validation split: nothing about validation is in
    meta.json, and every value there is finite (strict JSON)."""
    set_params(prepared, {"preprocess": {"val_size": 0}})  # as committed: no split
    for stage in ("preprocess", "train-lenet"):
        proc = run_stage(prepared, stage)
        assert proc.returncode == 0, proc.stderr
    assert len(load_split(prepared / "data/prepared", "val")) == 0
    text = (prepared / "models/lenet/meta.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    meta = json.loads(text)
    assert not any(k.startswith("val_") for k in meta["final"])
    assert all(v is None or math.isfinite(v) for v in meta["final"].values())


# ---------------------------------------------------------------- round four: the journal

def _decoy(root: Path) -> Path:
    """A folder with a set's temporary name, which a trusting recovery would swap in."""
    tmp = root / ".a.json.1.x.part"
    tmp.mkdir(exist_ok=True)
    return tmp


# Each would make the old recovery move or delete the victim folder outside the set
HOSTILE_JOURNALS = {
    "absolute target": lambda root, victim: [
        [str(_decoy(root)), str(victim), _decoy(root).stat().st_ino]],
    "../ target": lambda root, victim: [
        [str(_decoy(root)), str(root / ".." / victim.name), _decoy(root).stat().st_ino]],
    "foreign temporary": lambda root, victim: [
        [str(victim), str(root / "a.json"), (root / "a.json").stat().st_ino]],
    "wrong shape: a mapping": lambda root, victim: {"a": str(victim)},
    "wrong shape: short entry": lambda root, victim: [[str(victim)]],
    "wrong shape: bool inode": lambda root, victim: [[str(_decoy(root)),
                                                      str(root / "a.json"), True]],
}


@pytest.mark.parametrize("kind", sorted(HOSTILE_JOURNALS))
def test_a_hostile_journal_touches_nothing_and_is_set_aside(tmp_path, kind, capsys):
    """A leftover journal can come with a clone or a pull request: one that names
    anything but the set's own targets and temporary names is not executed."""
    root, outside = tmp_path / "repo", tmp_path / "victim"
    root.mkdir()
    outside.mkdir()
    (outside / "precious").write_text("keep me")
    (root / "a.json").write_text("old")
    journal = root / ".set.commit.json"
    journal.write_text(json.dumps(HOSTILE_JOURNALS[kind](root, outside)))
    with OutputSet(journal, [root / "a.json"]) as out:
        out.file(root / "a.json").write_text("new")
    assert (outside / "precious").read_text() == "keep me"
    assert (root / "a.json").read_text() == "new"
    assert not journal.exists() and (root / ".set.commit.json.rejected").exists()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "set aside" in err, err


def test_a_journal_through_a_symlinked_temporary_is_refused(tmp_path):
    root, outside = tmp_path / "repo", tmp_path / "victim"
    root.mkdir()
    outside.mkdir()
    (outside / "precious").write_text("keep me")
    link = root / ".a.json.1.x.part"
    link.symlink_to(outside)
    journal = root / ".set.commit.json"
    journal.write_text(json.dumps([[str(link), str(root / "a.json"),
                                    outside.stat().st_ino]]))
    OutputSet(journal, [root / "a.json"])
    assert (outside / "precious").read_text() == "keep me" and not (root / "a.json").exists()
    assert (root / ".set.commit.json.rejected").exists()


# ---------------------------------------------------------------- round four: all or nothing


def _three_outputs(root: Path) -> list[Path]:
    (root / "a.json").write_text("old a")
    (root / "figs").mkdir()
    (root / "figs" / "x.png").write_text("old x")
    (root / "c.md").write_text("old c")
    return [root / "a.json", root / "figs", root / "c.md"]


def _write_set(root: Path, targets: list[Path]) -> None:
    with OutputSet(root / ".j", targets) as out:
        out.file(targets[0]).write_text("new a")
        (out.dir(targets[1]) / "x.png").write_text("new x")
        out.file(targets[2]).write_text("new c")


def test_a_swap_that_fails_midway_puts_back_what_was_swapped(tmp_path, monkeypatch):
    from fmnist import files
    targets = _three_outputs(tmp_path)
    before = snapshot(tmp_path, ".")
    real = files.os.replace

    def failing(a, b):  # the new c.md cannot be moved in (the old one can move back)
        if Path(b) == targets[2] and not Path(a).name.endswith(".old.part"):
            raise OSError(1, "Operation not permitted", str(b))
        return real(a, b)
    monkeypatch.setattr(files.os, "replace", failing)
    with pytest.raises(OSError):
        _write_set(tmp_path, targets)
    monkeypatch.undo()
    assert snapshot(tmp_path, ".") == before
    assert strays(tmp_path) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="chattr +i needs root")
@pytest.mark.parametrize("which", [1, 2])
def test_an_immutable_target_stops_the_set_before_the_first_swap(tmp_path, which):
    targets = _three_outputs(tmp_path)
    before = snapshot(tmp_path, ".")
    subprocess.run(["chattr", "+i", str(targets[which])], check=True)
    try:
        with pytest.raises(UserError, match="cannot write"):
            _write_set(tmp_path, targets)
    finally:
        subprocess.run(["chattr", "-i", str(targets[which])], check=True)
    assert snapshot(tmp_path, ".") == before
    assert strays(tmp_path) == []


# ---------------------------------------------------------------- round four: side inputs


def _metrics_like_evaluates() -> dict:
    from fmnist import CLASSES
    s = {"accuracy": 0.9, "loss": 0.3}
    return {"train": {"loss": 0.2, "accuracy": 0.95},
            "test": {**s, "macro_f1": 0.9, "per_class": {
                c: {"precision": 0.9, "recall": 0.9, "f1": 0.9} for c in CLASSES}},
            "test_views": {"headline": "hflip", "single": s, "hflip": s}}


@pytest.mark.parametrize("damage", ["{}", "missing class", "string accuracy", "bad view",
                                    "not json"])
def test_metrics_json_is_checked_where_package_reads_it(tmp_path, damage):
    from fmnist.package import read_metrics
    m = _metrics_like_evaluates()
    path = tmp_path / "lenet.json"
    path.write_text(json.dumps(m))
    assert read_metrics(path) == m
    if damage == "missing class":
        del m["test"]["per_class"]["Bag"]
    elif damage == "string accuracy":
        m["test"]["accuracy"] = "0.9"
    elif damage == "bad view":
        m["test_views"]["headline"] = "mirror"
    text = {"{}": "{}", "not json": "{"}.get(damage, json.dumps(m))
    path.write_text(text)
    with pytest.raises(UserError, match=r"lenet\.json .*`dvc repro evaluate`"):
        read_metrics(path)


@pytest.mark.parametrize("content", [b"actual,predicted\nBag,\xffBag\n",
                                     b"actual,predicted\nBag,Purse\n", b"a,b\n1,2\n"])
def test_a_confusion_csv_is_checked_where_package_reads_it(tmp_path, content):
    from fmnist.package import confusions
    (tmp_path / "c.csv").write_bytes(content)
    with pytest.raises(UserError, match=r"c\.csv .*`dvc repro evaluate`"):
        confusions(tmp_path / "c.csv")


@pytest.mark.parametrize("content", ["epoch\ttrain_loss\ttrain_accuracy\n1\tlow\t0.5\n",
                                     "epoch\tloss\n1\t0.5\n", "epoch\ttrain_loss\n\xff\n"])
def test_a_curves_tsv_is_checked_where_evaluate_reads_it(tmp_path, content):
    from fmnist.figures import read_curves
    (tmp_path / "lenet.tsv").write_bytes(content.encode("utf-8", "surrogateescape")
                                         if "\xff" not in content else b"epoch\n\xff\n")
    with pytest.raises(UserError, match=r"lenet\.tsv is not a training curves file.*dvc repro"):
        read_curves(tmp_path / "lenet.tsv")


# ---------------------------------------------------------------- round four: the rest


@pytest.mark.parametrize("args", [["tools.lock", "--check", "--lock", "missing.lock"],
                                  ["tools.plots_page", "--out", "/"]])
def test_tools_errors_are_one_line(args, tmp_path):
    proc = subprocess.run([PY, "-m", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr


def test_an_output_that_is_an_input_is_refused_before_anything_is_written(tmp_path):
    from tools.repo import stage_argv
    argv = stage_argv("train-lenet")
    argv[argv.index("--out") + 1] = "data/prepared"
    argv[1] = str(ROOT / argv[1])  # the stage script, run in an empty folder
    (tmp_path / "data/prepared").mkdir(parents=True)
    (tmp_path / "data/prepared/train.pt").write_text("the data")
    proc = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert_one_line_error(proc, "the output data/prepared and the input data/prepared "
                          "overlap")
    assert (tmp_path / "data/prepared/train.pt").read_text() == "the data"


def test_a_long_path_in_an_error_is_cut_in_the_middle():
    proc = subprocess.run([PY, "-m", "fmnist.cli", "check-params", "--params",
                           "/" + "x" * 100_000 + "/params.yaml"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and len(proc.stderr) < 1100, len(proc.stderr)
    assert "..." in proc.stderr and proc.stderr.count("\n") == 1


# ------------------------------------------------- round five: DVC's files, bounded reads

BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n"
    for p, c in zip("abcdefgh", "bcdefghi", strict=True)) + "stages: {}\n"
DEEP = "stages: " + "[" * 20_000 + "]" * 20_000 + "\n"


@pytest.mark.parametrize("text,says", [(BOMB, "aliases expand"), (DEEP, "nested more than"),
                                       ("stages: {a: [\n", "not valid YAML"),
                                       ("stages: *nowhere\n", "not valid YAML"),
                                       ("stages: {? [a]: 1}\n", "not valid YAML")])
def test_a_hostile_dvc_file_is_refused_before_any_parser_expands_it(text, says):
    """An alias bomb (10^9 nodes once expanded), 20,000 levels of nesting, broken YAML,
    an undefined alias, a list as a key: one UserError naming the file, the first
    three in a single pass over the events."""
    from fmnist.dvcfiles import load_yaml

    with pytest.raises(UserError, match=says) as exc:
        load_yaml(text, "dvc.lock")
    assert str(exc.value).startswith("dvc.lock: ")


def test_the_projects_own_dvc_files_pass_the_bound():
    """dvc.yaml uses anchors (&train_deps): bounded is not alias-free."""
    from fmnist.dvcfiles import check_files, load_yaml

    check_files(ROOT)
    assert "train-alexnet" in load_yaml((ROOT / "dvc.yaml").read_text(), "dvc.yaml")["stages"]


@pytest.mark.parametrize("case", ["alias_bomb", "nested_20000", "outs_not_a_list"])
def test_a_hostile_committed_dvc_lock_is_one_line_for_reproduce_and_check_lock(
        tmp_path, case):
    """Case 9 of round five: a committed dvc.lock that hung `fmnist reproduce` and
    `tools.check_lock` inside DVC's reader (or ended in a RecursionError traceback),
    and one whose outs are not a list: each ends in one line, exit 2, at once."""
    from tools.repo import repo_env, run

    env = repo_env(tmp_path / "home")
    (tmp_path / "home").mkdir()
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "dvc.yaml").write_text((ROOT / "dvc.yaml").read_text())
    (repo / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    lock = {"alias_bomb": BOMB, "nested_20000": DEEP,
            "outs_not_a_list": "schema: '2.0'\nstages:\n  train-lenet:\n    outs: 7\n"}[case]
    (repo / "dvc.lock").write_text(lock)
    run(["git", "init", "-q"], repo, env)
    run(["git", "add", "."], repo, env)
    run(["git", "commit", "-qm", "hostile"], repo, env)
    if case != "outs_not_a_list":  # (check_lock leaves the shape to DVC's own schema)
        proc = subprocess.run([PY, "-m", "tools.check_lock", "--repo", str(repo)], cwd=ROOT,
                              capture_output=True, text=True, timeout=60)
        assert_one_line_error(proc, "dvc.lock")
    proc = subprocess.run([PY, "-m", "fmnist.cli", "reproduce", "--repo", str(repo),
                           "--keep", str(tmp_path / "work")], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert_one_line_error(proc, "dvc.lock")
    assert not (tmp_path / "work").exists()


@pytest.mark.parametrize("content", ["garbage{", '{"portable": [1]}', "[]"])
def test_a_fingerprint_file_of_garbage_is_one_line_before_any_measuring(tmp_path, content):
    """Round five, case 11: `python -m tools.fingerprint --file` on garbage ended in a
    traceback after minutes of training; now one line, at once."""
    bad = tmp_path / "fp.json"
    bad.write_text(content)
    proc = subprocess.run([PY, "-m", "tools.fingerprint", "--check", "--file", str(bad)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert_one_line_error(proc, str(bad), "not a fingerprint file")
