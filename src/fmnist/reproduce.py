"""`fmnist reproduce` (`make reproduce`): re-run the committed training from scratch and
say whether it is the committed result: the same bits, or the same science.

    fmnist reproduce                                   # the LeNet
    fmnist reproduce --stages train-lenet train-alexnet [--json]

Clones the repository's HEAD into a temporary folder (or ``--keep DIR``, a new or empty
folder that is kept), runs the chosen stages there with `dvc repro` from nothing (with
the stages upstream of them: `download` and `preprocess` for a training), and compares
every output's hash with the committed dvc.lock. Where a training stage's bits differ (a
GPU, another CPU tier, `native` numerics, another torch), the re-trained model is tested
on the test split against the committed run's per-image predictions (the confusion CSV
that `evaluate` committed): the paired difference of test accuracy (here minus
committed) with its 90% confidence interval, from a bootstrap over the test images with
a fixed seed, against a margin of ±0.005 (two one-sided tests at 5% each):

- ``identical``: the bits are equal;
- ``equivalent``: the interval lies inside the margin;
- ``different``: the interval lies wholly beyond it (or, for data, the bits differ);
- ``inconclusive``: the interval straddles the margin: too few test images to say;
- ``not run``: a stage of the committed dvc.lock that this run did not re-run.

McNemar's exact p (do the two differ at all?) is given beside it. Exit code 0 when every
stage that ran is identical or equivalent, 1 otherwise, 2 on an error. A stage that is
not identical also gets what differs: the outputs, and the environment its timings
recorded (torch, CPU, ISA flags, threads, numerics) against the one here. Ctrl-C or
SIGTERM stops `dvc repro` and everything it started, and removes the temporary folder.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from fmnist.common import UserError, option, stage_command
from fmnist.dvcfiles import check_yaml, load_yaml, lock_outs
from fmnist.runtime import NATIVE_BF16_FLAGS
from fmnist.stack import LOCK_FILE, differences

UPSTREAM = ("download", "preprocess")
# The equivalence test: the CONFIDENCE interval of the paired accuracy difference inside
# ±MARGIN (two one-sided tests at (1 - CONFIDENCE) / 2 each), from BOOTSTRAP resamples of
# the test images drawn with a fixed SEED, so that a verdict is the same every time
MARGIN = 0.005
CONFIDENCE = 0.90
BOOTSTRAP = 10_000
SEED = 0
# The verdicts that exit 0 (the others: inconclusive, different)
PASSING = ("identical", "equivalent", "not run")


def committed(repo: Path, path: str) -> str | None:
    proc = subprocess.run(["git", "show", f"HEAD:{path}"], cwd=repo, capture_output=True,
                          text=True)
    return proc.stdout if proc.returncode == 0 else None


def environment_diff(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    keys = sorted(set(before) | set(after))
    same = {k: before.get(k) == after.get(k) for k in keys}
    same["cpu_flags"] = set(before.get("cpu_flags", [])) == set(after.get("cpu_flags", []))
    return [f"{k}: committed run {before.get(k)!r}, here {after.get(k)!r}"
            for k in keys if not same[k]]


def cmd_option(pipeline: dict[str, Any], stage: str, flag: str) -> list[str]:
    """The values after ``flag`` in a stage's cmd in dvc.yaml (the one place paths
    live): ``--timings`` of a training stage, ``--confusion`` of evaluate."""
    return option(stage_command(pipeline, stage), flag)


def timings_path(pipeline: dict[str, Any], stage: str) -> str | None:
    """Where a training stage records its timings: its cmd's ``--timings``."""
    return next(iter(cmd_option(pipeline, stage, "--timings")), None)


# ---------------------------------------------------------------- the statistical verdict


def mcnemar_p(only_committed: int, only_here: int) -> float:
    """The exact (binomial) two-sided McNemar test: under the hypothesis that the two
    models are equally accurate, each image that exactly one of them gets right is that
    one's with probability 1/2."""
    from scipy.stats import binomtest

    n = only_committed + only_here
    return 1.0 if n == 0 else float(binomtest(only_committed, n, 0.5).pvalue)


def paired_interval(only_committed: int, only_here: int, n: int) -> tuple[float, float]:
    """The CONFIDENCE interval of (accuracy here - accuracy committed) on ``n`` paired
    images: a percentile bootstrap over the images. Resampling images with replacement
    draws how many fall in each class of pair (right only for the committed model, only
    here, or alike) from a multinomial, so the counts alone give it, exactly as
    resampling the 10,000 images would."""
    import numpy as np

    if only_committed + only_here == 0:
        return 0.0, 0.0
    p = [only_committed / n, only_here / n, 1 - (only_committed + only_here) / n]
    counts = np.random.default_rng(SEED).multinomial(n, p, size=BOOTSTRAP)
    diffs = (counts[:, 1] - counts[:, 0]) / n
    tail = (1 - CONFIDENCE) / 2
    low, high = np.quantile(diffs, [tail, 1 - tail])
    return float(low), float(high)


@dataclass(frozen=True)
class Comparison:
    """A re-trained model against the committed run, on the same test images."""

    committed: float   # test accuracy
    here: float
    agreement: float   # fraction of images given the same class
    only_committed: int  # images only the committed model gets right
    only_here: int
    p_value: float     # McNemar's: do they differ at all?
    interval: tuple[float, float]  # of here - committed

    @property
    def difference(self) -> float:
        return self.here - self.committed

    @property
    def verdict(self) -> str:
        low, high = (round(x, 12) for x in self.interval)  # 0.995 - 1 is not quite 0.005
        if -MARGIN < low and high < MARGIN:
            return "equivalent"
        if low > MARGIN or high < -MARGIN:
            return "different"
        return "inconclusive"


def compare_predictions(labels: list[int], committed: list[int], here: list[int]) -> Comparison:
    if not len(labels) == len(committed) == len(here) or not labels:
        raise UserError(f"the committed predictions ({len(committed)}) and this run's "
                        f"({len(here)}) do not cover the same {len(labels)} test images")
    right_c = [c == y for c, y in zip(committed, labels, strict=True)]
    right_h = [h == y for h, y in zip(here, labels, strict=True)]
    only_c = sum(a and not b for a, b in zip(right_c, right_h, strict=True))
    only_h = sum(b and not a for a, b in zip(right_c, right_h, strict=True))
    n = len(labels)
    return Comparison(sum(right_c) / n, sum(right_h) / n,
                      sum(c == h for c, h in zip(committed, here, strict=True)) / n,
                      only_c, only_h, mcnemar_p(only_c, only_h),
                      paired_interval(only_c, only_h, n))


def read_confusion(text: str, where: str) -> tuple[list[int], list[int]]:
    """(actual, predicted) class indices per test image, from a confusion CSV's text."""
    import csv
    import io

    from fmnist import CLASSES

    index = {c: i for i, c in enumerate(CLASSES)}
    try:
        rows = list(csv.DictReader(io.StringIO(text)))
        return [index[r["actual"]] for r in rows], [index[r["predicted"]] for r in rows]
    except (KeyError, csv.Error) as exc:
        raise UserError(f"{where} is not a confusion CSV of this project's classes "
                        f"({type(exc).__name__}: {exc}); `dvc repro evaluate` writes it") from None


def predict_classes(model_dir: Path, prepared: Path, params_file: Path,
                    model: str) -> tuple[list[int], list[int]]:
    """A trained model on the test split, in the view and numerics that evaluate uses
    (``params_file``'s evaluate section): (labels, predicted classes)."""
    import torch

    from fmnist.checkpoint import load_checkpoint
    from fmnist.data import load_split
    from fmnist.inference import input_stats, predict_views
    from fmnist.params import EvaluateParams, load_section
    from fmnist.runtime import pin_numerics, resolve_device

    params = load_section("evaluate", EvaluateParams, params_file)
    device = resolve_device(params.device)
    pin_numerics(params.numerics, params.threads, device)
    net, meta = load_checkpoint(model_dir, model)
    test = load_split(prepared, "test")
    logits = predict_views(net.to(device), test, input_stats(meta), params.batch_size,
                           device)[params.tta]
    return test.labels.tolist(), torch.argmax(logits, 1).tolist()


def predictions_here(clone: Path, pipeline: dict[str, Any], stage: str,
                     model: str) -> tuple[list[int], list[int]]:
    """The clone's re-trained model on the clone's test split: (labels, classes)."""
    out = cmd_option(pipeline, stage, "--out")
    prepared = cmd_option(pipeline, stage, "--prepared")
    if not out or not prepared:
        raise UserError(f"dvc.yaml: the {stage} command names no --out or --prepared")
    return predict_classes(clone / out[0], clone / prepared[0], clone / "params.yaml", model)


def statistical(repo: Path, clone: Path, pipeline: dict[str, Any], stage: str) -> Comparison:
    from fmnist.models import MODELS

    model = next((m.name for m in MODELS.values() if m.stage == stage), None)
    if model is None:
        raise UserError(f"{stage} is not a training stage: only bits can be compared")
    names = cmd_option(pipeline, "evaluate", "--models")
    paths = cmd_option(pipeline, "evaluate", "--confusion")
    if model not in names or len(paths) != len(names):
        raise UserError(f"dvc.yaml: evaluate's command names no --confusion for {model}")
    path = paths[names.index(model)]
    text = committed(repo, path)
    if text is None:
        raise UserError(f"{path} is not committed: the committed run's predictions are "
                        "needed for a verdict (`dvc repro evaluate`, then commit)")
    labels, then = read_confusion(text, f"{path} (committed)")
    labels_here, now = predictions_here(clone, pipeline, stage, model)
    if labels != labels_here:
        raise UserError(f"{path} (committed) is not about this test split: its labels "
                        "differ from data/prepared's")
    return compare_predictions(labels, then, now)


def clone_env(clone: Path, home: Path) -> dict[str, str]:
    """The clone's stages run the clone's code (HEAD, not this working tree's) with this
    interpreter's dvc and python, and nothing of the user's DVC configuration (a shared
    cache or run-cache would restore results instead of computing them)."""
    home.mkdir(parents=True, exist_ok=True)
    return {**os.environ, "HOME": str(home), "DVC_NO_ANALYTICS": "1",
            "PATH": os.pathsep.join([str(Path(sys.executable).parent),
                                     os.environ.get("PATH", "")]),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(clone / "src"),
                                                        os.environ.get("PYTHONPATH")]))}


def stop_group(proc: subprocess.Popen) -> None:
    """End ``proc`` and everything it started (its own process group): SIGTERM, a grace
    period for the leader, then SIGKILL for whatever of the group is left."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def run_in(cmd: list[str], cwd: Path, env: dict[str, str], what: str,
           stdout: TextIO | None = None) -> None:
    """Run ``cmd`` in a process group of its own, so that an interrupt of this command
    (Ctrl-C, SIGTERM: see ``interruptible``) ends it and all it started."""
    try:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, text=True, stdout=stdout,
                                start_new_session=True)
    except FileNotFoundError:
        raise UserError(f"{cmd[0]} not found: run `make install` first") from None
    try:
        code = proc.wait()
    except BaseException:
        stop_group(proc)
        raise
    if code != 0:
        raise UserError(f"`{' '.join(cmd)}` failed {what}")


@contextmanager
def interruptible() -> Iterator[None]:
    """SIGTERM as Ctrl-C: the work in progress is stopped and the temporary folder
    removed on the way out (exit 130, as run_command ends an interrupt)."""
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    before = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def record(text: str | None) -> dict[str, Any]:
    """A timings record as JSON, or {} where it is absent or not a JSON object: it only
    explains a verdict, it never makes one."""
    try:
        data = json.loads(text) if text else {}
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def explain(clone: Path, stage: str, timings: str | None,
            committed_timings: str | None) -> list[str]:
    if timings is None:
        return []
    here = clone / timings
    then = record(committed_timings)
    now = record(here.read_text(errors="replace") if here.is_file() else None)
    before, after = then.get("environment"), now.get("environment")
    if not isinstance(before, dict) or not before or "note" in before:
        return ["the committed run recorded no environment to compare with"]
    after = after if isinstance(after, dict) else {}
    lines = environment_diff(before, after)
    if then.get("precision") != now.get("precision"):
        lines.append(f"precision: the committed run trained in {then.get('precision')}, "
                     f"this one in {now.get('precision')}")
    native = set(NATIVE_BF16_FLAGS)
    if then.get("precision") == "bf16" and native & set(before.get("cpu_flags", [])) \
            and not native & set(after.get("cpu_flags", [])):
        lines.append("the committed run trained in bf16 on a CPU with native bf16 "
                     "(AVX512-BF16/AMX); this CPU has none (amp: auto trains in fp32 "
                     "here, and bf16 would be emulated with other rounding)")
    lock = clone / LOCK_FILE
    if lock.exists():
        stack = differences(lock)
        lines += [f"installed here unlike {LOCK_FILE} (`make install` installs it "
                  f"exactly): {line}" for line in stack[:20]]
        if len(stack) > 20:
            lines.append(f"... and {len(stack) - 20} more packages")
    return lines or ["the environment matches the committed record and the lock: the code, "
                     "data or params differ, or a kernel is not deterministic here"]


@dataclass
class StageResult:
    stage: str
    bitwise: bool
    verdict: str
    differs: list[str]          # outputs: "path: committed X, here Y"
    why: list[str]              # the environments' differences
    comparison: Comparison | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"bitwise": self.bitwise, "verdict": self.verdict}
        if self.comparison is not None:
            c = self.comparison
            out.update({"test_accuracy": {"committed": c.committed, "here": c.here},
                        "difference": c.difference,
                        "interval": {"confidence": CONFIDENCE, "low": c.interval[0],
                                     "high": c.interval[1]},
                        "margin": MARGIN, "agreement": c.agreement, "p_value": c.p_value,
                        "only_committed_right": c.only_committed,
                        "only_here_right": c.only_here})
        if not self.bitwise and self.verdict != "not run":
            out.update({"outputs": self.differs, "environment": self.why})
        return out

    def headline(self) -> str:
        if self.verdict == "not run":
            return f"{self.stage}: not run"
        if self.bitwise:
            return f"{self.stage}: identical (reproduced bit for bit)"
        c = self.comparison
        if c is None:
            return f"{self.stage}: different (NOT reproduced: its outputs differ)"
        low, high = c.interval
        return (f"{self.stage}: {self.verdict} (not bit-identical; test accuracy "
                f"{c.committed:.4f} committed, {c.here:.4f} here; difference "
                f"{c.difference:+.4f}, {CONFIDENCE:.0%} interval [{low:+.4f}, {high:+.4f}] "
                f"against a margin of ±{MARGIN}; same class for {c.agreement:.2%} of "
                f"images; McNemar p = {c.p_value:.3g})")


def check_stage(repo: Path, clone: Path, pipeline: dict[str, Any], lock: dict[str, Any],
                new: dict[str, Any], stage: str) -> StageResult:
    if stage not in new["stages"]:
        return StageResult(stage, False, "not run", [], [])
    want = lock_outs(lock, stage, "the committed dvc.lock")
    got = lock_outs(new, stage, "the re-run's dvc.lock")
    if want and want == got:
        return StageResult(stage, True, "identical", [], [])
    differs = [f"{path}: committed {want.get(path)}, here {got.get(path)}"
               for path in sorted(set(want) | set(got)) if want.get(path) != got.get(path)]
    timings = timings_path(pipeline, stage)
    why = explain(clone, stage, timings, committed(repo, timings) if timings else None)
    if stage in UPSTREAM:  # data: only bits count
        return StageResult(stage, False, "different", differs, why)
    comparison = statistical(repo, clone, pipeline, stage)
    return StageResult(stage, False, comparison.verdict, differs, why, comparison)


def committed_lock(repo: Path) -> dict[str, Any]:
    """The committed dvc.lock, parsed once bounded; the committed dvc.yaml is bounded
    too, before the clone's `dvc repro` reads it."""
    pipeline = committed(repo, "dvc.yaml")
    if pipeline is not None:
        check_yaml(pipeline, f"the committed dvc.yaml in {repo}")
    lock_text = committed(repo, "dvc.lock")
    if lock_text is None:
        raise UserError(f"no committed dvc.lock in {repo}'s HEAD: nothing to reproduce")
    lock = load_yaml(lock_text, f"the committed dvc.lock in {repo}")
    if not isinstance(lock, dict) or not isinstance(lock.get("stages"), dict):
        raise UserError(f"the committed dvc.lock in {repo}'s HEAD is not DVC's lock file "
                        "(no mapping of stages): `dvc repro` and commit it again")
    for stage in lock["stages"]:  # shaped as DVC writes it, before any work
        lock_outs(lock, stage, f"the committed dvc.lock in {repo}")
    return lock


@contextmanager
def work_folder(keep: Path | None) -> Iterator[Path]:
    """A temporary folder, removed on the way out; or ``keep``, which must be new or an
    empty folder (never a symbolic link): it is created here and nothing in it is ever
    deleted, so a wrong path costs nothing."""
    if keep is None:
        with tempfile.TemporaryDirectory(prefix="fmnist-reproduce-") as tmp:
            yield Path(tmp)
        return
    if keep.is_symlink() or (keep.exists() and (not keep.is_dir() or any(keep.iterdir()))):
        raise UserError(f"--keep {keep}: not a new or empty folder; give one, and this "
                        "run's clone stays there")
    try:
        keep.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--keep {keep}: cannot make the folder ({exc.strerror or exc})"
                        ) from None
    yield keep.resolve()


def reproduce(repo: Path, stages: list[str], keep: Path | None = None,
              as_json: bool = False) -> int:
    """Re-run ``stages`` (each once) in a clone of ``repo``'s HEAD, in a temporary folder
    or ``keep``; print the verdicts (one JSON object with ``as_json``); return the exit
    code."""
    lock = committed_lock(repo)
    stages = list(dict.fromkeys(stages))
    unknown = [s for s in stages if s not in lock["stages"]]
    if unknown:
        raise UserError(f"no stage {unknown[0]!r} in the committed dvc.lock (there: "
                        f"{', '.join(lock['stages'])})")
    log = sys.stderr  # stdout holds the verdicts alone: one line per stage first, or JSON
    with interruptible(), work_folder(keep) as workdir:
        clone = workdir / "clone"
        env = clone_env(clone, workdir / "home")
        run_in(["git", "clone", "-q", str(repo), str(clone)], workdir, env, f"for {repo}")
        # without the committed lock in the clone, the lock dvc writes holds exactly
        # the stages this run re-ran
        (clone / "dvc.lock").unlink()
        print(f"re-running {', '.join(stages)} from scratch in {clone} ...", file=log,
              flush=True)
        t0 = time.perf_counter()
        run_in(["dvc", "repro", "--no-run-cache", *stages], clone, env,
               f"in the clone {clone}", stdout=log)
        print(f"done in {time.perf_counter() - t0:.0f} s", file=log, flush=True)
        new = load_yaml((clone / "dvc.lock").read_text(), "the re-run's dvc.lock")
        pipeline = load_yaml((clone / "dvc.yaml").read_text(), "dvc.yaml")
        results = [check_stage(repo, clone, pipeline, lock, new, stage)
                   for stage in lock["stages"]]
    report(results, as_json)
    return 0 if all(r.verdict in PASSING for r in results) else 1


def report(results: list[StageResult], as_json: bool) -> None:
    if as_json:
        print(json.dumps({r.stage: r.as_dict() for r in results}, indent=1))
        return
    for r in results:
        print(r.headline())
    for r in results:
        if not r.bitwise and r.verdict != "not run":
            print(f"{r.stage}: what differs from the committed run")
            for line in [*r.differs, *r.why]:
                print(f"  {line}")
