"""Generic file I/O that every module may use: atomic writes, folders swapped in whole,
and torch's save and load made deterministic and safe.

Outputs are written to a temporary path beside their target and renamed over it, so a
reader (or DVC) never sees a half-written file, whether the writer fails, is
interrupted or is killed.
"""

from __future__ import annotations

import contextlib
import glob
import json
import math
import os
import pickle
import re
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fmnist.common import UserError, first_line


def _part(path: Path) -> tuple[str, str]:
    """mkstemp's prefix and suffix for a temporary sibling of ``path``: the writer's pid
    is in the name, so that the next run can tell a dead writer's leftovers."""
    return f".{path.name}.{os.getpid()}.", ".part"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def sweep(path: str | os.PathLike[str]) -> None:
    """Remove what a killed writer of ``path`` left beside it: its temporary ``.part``
    files or folders (those of a writer that is still running stay), and the old
    folder of a swap cut in the middle (put back where the new one never arrived)."""
    path = Path(path)
    if not path.parent.is_dir():
        return
    mine = re.compile(rf"^\.{re.escape(path.name)}\.(\d+)\.[^.]+\.part$")
    for stray in path.parent.glob(f".{glob.escape(path.name)}.*.part"):
        m = mine.match(stray.name)
        if m is None and not re.fullmatch(rf"\.{re.escape(path.name)}\.[^.]+\.part",
                                          stray.name):
            continue  # another output's (NAME.x): not ours to judge
        if m is None or int(m.group(1)) == os.getpid() or not _alive(int(m.group(1))):
            _remove(stray)
    old = path.with_name(f".{path.name}.old")
    if old.exists():
        if path.exists():
            _remove(old)
        else:
            os.replace(old, path)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux's renameat2 with RENAME_EXCHANGE); False where
    the system or the file system does not offer it."""
    import ctypes
    import errno

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM, errno.EXDEV):
        return False
    raise OSError(err, os.strerror(err), str(b))


def swap_in(tmp: Path, path: Path, keep_old: bool = False) -> Path | None:
    """Put ``tmp`` (a file or a folder) where ``path`` is, in one step where the system
    allows: a reader sees the old or the new, never a mix or, with folders, nothing.
    With ``keep_old`` the old version is kept aside and its place returned (None where
    there was none), so that a set can put it back."""
    if path.is_dir() and not path.is_symlink():
        if _exchange(tmp, path):
            if keep_old:
                return tmp  # now the old folder
            _remove(tmp)
            return None
        old = path.with_name(f".{path.name}.old")  # two renames; sweep() repairs a cut
        _remove(old)
        os.replace(path, old)
        os.replace(tmp, path)
        if keep_old:
            return old
        _remove(old)
    elif keep_old and (path.exists() or path.is_symlink()):
        backup = path.with_name(f".{path.name}.{os.getpid()}.old.part")
        os.replace(path, backup)
        try:
            os.replace(tmp, path)
        except OSError:
            os.replace(backup, path)
            raise
        return backup
    else:
        os.replace(tmp, path)
    return None


def _put_back(path: Path, old: Path | None) -> None:
    """Undo ``swap_in(..., keep_old=True)``: ``old`` (None: there was nothing) returns
    to ``path``, and the new version goes."""
    if old is None:
        _remove(path)
    elif old.is_dir() and path.is_dir() and not path.is_symlink() and _exchange(old, path):
        _remove(old)
    else:
        _remove(path)
        os.replace(old, path)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it over ``path`` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep(path)
    prefix, suffix = _part(path)
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o644)  # mkstemp's 0600 would surprise whoever shares the outputs
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary folder next to ``path``; swap it in for ``path`` only on success.

    An output folder is either the old one or the complete new one, never a mix.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep(path)
    prefix, suffix = _part(path)
    tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=path.parent))
    os.chmod(tmp, 0o755)
    try:
        yield tmp
        swap_in(tmp, path)
    finally:
        _remove(tmp)


JOURNAL_SUFFIX = ".commit.json"


class OutputSet:
    """A stage's outputs built aside and swapped in together, or not at all.

        with OutputSet.beside([metrics, fig_dir]) as out:
            write_json(out.file(metrics), ...)    # temporary paths beside the targets
            figures(out.dir(fig_dir))
        # on success every target is swapped in; on an exception none is

    Every target must be replaceable before the first swap (``check_writable``), and a
    swap that fails midway puts back what the set had already swapped, so a failure
    leaves every output as it was. Swapping several paths is not one step: the pairs
    are written to ``journal`` first, and a run killed while swapping is completed
    (rolled forward) by the next ``OutputSet`` on the same journal and targets, before
    it does anything else. A journal is trusted only as far as it names this set's
    targets and their own temporary names (``recover``). Leftovers of a killed run's
    temporary paths are removed as in ``sweep``.
    """

    def __init__(self, journal: str | os.PathLike[str],
                 targets: list[str | os.PathLike[str]]):
        self.journal = Path(journal)
        self.targets = [Path(t) for t in targets]
        self.staged: list[tuple[Path, Path]] = []
        recover(self.journal, self.targets)

    @classmethod
    def beside(cls, targets: list[str | os.PathLike[str]]) -> OutputSet:
        """The set with its journal beside its first target: ``.NAME.commit.json``
        (hidden, and never one of a stage's declared outputs)."""
        first = Path(targets[0])
        return cls(first.with_name(f".{first.name}{JOURNAL_SUFFIX}"), targets)

    def _stage(self, path: str | os.PathLike[str], folder: bool) -> Path:
        path = Path(path)
        if path not in self.targets:
            raise ValueError(f"{path} is not one of this set's targets")
        path.parent.mkdir(parents=True, exist_ok=True)
        sweep(path)
        prefix, suffix = _part(path)
        if folder:
            tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=path.parent))
            os.chmod(tmp, 0o755)
        else:
            fd, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=path.parent)
            os.close(fd)
            tmp = Path(name)
            os.chmod(tmp, 0o644)
        self.staged.append((tmp, path))
        return tmp

    def file(self, path: str | os.PathLike[str]) -> Path:
        return self._stage(path, folder=False)

    def dir(self, path: str | os.PathLike[str]) -> Path:
        return self._stage(path, folder=True)

    def commit(self) -> None:
        try:
            check_writable([p for _, p in self.staged], "swapping in the outputs")
        except UserError:
            self.discard()
            raise
        # each temporary path's inode: after a folder exchange the temporary name holds
        # the old folder, and recover() must not mistake it for the new one
        with atomic_path(self.journal) as tmp:
            tmp.write_text(json.dumps([[str(t), str(p), t.stat().st_ino]
                                       for t, p in self.staged]))
        done: list[tuple[Path, Path | None]] = []
        try:
            for tmp, path in self.staged:
                existed = path.exists() or path.is_symlink()
                old = swap_in(tmp, path, keep_old=True)
                done.append((path, old if existed else None))
        except OSError:
            for path, old in reversed(done):  # put back what was swapped
                _put_back(path, old)
            self.journal.unlink(missing_ok=True)
            self.discard()
            raise
        for _, old in done:
            if old is not None:
                _remove(old)
        self.journal.unlink()
        self.staged = []

    def discard(self) -> None:
        for tmp, _ in self.staged:
            _remove(tmp)
        self.staged = []

    def __enter__(self) -> OutputSet:
        return self

    def __exit__(self, kind, exc, tb) -> None:
        if kind is None:
            self.commit()
        else:
            self.discard()


def _journal_entries(journal: Path, targets: list[Path]) -> list[tuple[Path, Path, int]]:
    """The journal's entries, if each names one of ``targets`` and, beside it, a
    temporary path of the set's own naming that is no symlink; else ValueError."""
    pairs = json.loads(journal.read_text(encoding="utf-8"))
    allowed = {os.path.abspath(t): t for t in targets}
    if not isinstance(pairs, list):
        raise ValueError("not a list of entries")
    out = []
    for entry in pairs:
        if not (isinstance(entry, list) and len(entry) == 3
                and all(isinstance(x, str) for x in entry[:2])
                and isinstance(entry[2], int) and not isinstance(entry[2], bool)):
            raise ValueError(f"an entry of the wrong shape: {shorten(repr(entry), 80)}")
        tmp, path = os.path.abspath(entry[0]), os.path.abspath(entry[1])
        if path not in allowed:
            raise ValueError(f"{shorten(entry[1], 80)} is none of this set's outputs")
        name = os.path.basename(path)
        if os.path.dirname(tmp) != os.path.dirname(path) or not re.fullmatch(
                rf"\.{re.escape(name)}\.\d+\.[^./]+\.part", os.path.basename(tmp)):
            raise ValueError(f"{shorten(entry[0], 80)} is not a temporary path of {name}")
        if os.path.islink(tmp):
            raise ValueError(f"{shorten(entry[0], 80)} is a symlink")
        out.append((Path(tmp), allowed[path], entry[2]))
    return out


def recover(journal: str | os.PathLike[str], targets: list[Path]) -> None:
    """Finish the swaps of an ``OutputSet`` whose run was killed while swapping. A
    journal that names anything but ``targets`` and their temporary paths (it may have
    come with a clone or a pull request) is set aside, with one warning line, and
    nothing is touched."""
    journal = Path(journal)
    if not journal.exists():
        return
    try:
        entries = _journal_entries(journal, targets)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        aside = journal.with_name(journal.name + ".rejected")
        os.replace(journal, aside)
        print(f"warning: {shorten(str(journal))} is not a journal of this stage's outputs "
              f"({first_line(exc, 120)}); set aside as {aside.name}, nothing done",
              file=sys.stderr)
        return
    for tmp, path, ino in entries:
        if path.exists() and path.stat().st_ino == ino:  # swapped in before the kill
            if tmp.exists():
                _remove(tmp)  # the old folder, exchanged out
        elif tmp.exists() and tmp.stat().st_ino == ino:
            swap_in(tmp, path)
    for _, path, _ in entries:
        sweep(path)  # a dead writer's old versions kept aside
    journal.unlink(missing_ok=True)


def shorten(text: str, limit: int = 160) -> str:
    """``text`` cut in the middle to at most ``limit`` characters: a path in a one-line
    error keeps its start and its file name."""
    if len(text) <= limit:
        return text
    half = (limit - 3) // 2
    return text[:half] + "..." + text[-(limit - 3 - half):]


def check_apart(inputs: list[str | os.PathLike[str]],
                outputs: list[str | os.PathLike[str]], what: str) -> None:
    """Refuse an output that is, holds or lies inside an input (``--out`` equal to
    ``--prepared`` would replace the data with a model), or another output."""
    def inside(a: str, b: str) -> bool:
        return a == b or a.startswith(b.rstrip(os.sep) + os.sep)

    ins = [(str(p), os.path.realpath(p)) for p in inputs]
    outs = [(str(p), os.path.realpath(p)) for p in outputs]
    for i, (shown_out, out) in enumerate(outs):
        for shown_in, inp in ins:
            if inside(out, inp) or inside(inp, out):
                raise UserError(f"{what}: the output {shorten(shown_out)} and the input "
                                f"{shorten(shown_in)} overlap; give them separate paths")
        for shown_other, other in outs[i + 1:]:
            if inside(out, other) or inside(other, out):
                raise UserError(f"{what}: the outputs {shorten(shown_out)} and "
                                f"{shorten(shown_other)} overlap; give them separate paths")


PROBE_BYTES = 1 << 16


def check_writable(paths: list[str | os.PathLike[str]], what: str) -> None:
    """Can each of ``paths`` be written (created, or replaced with a swap)? Probes its
    folder with a small file (a read-only or full file system, no permission), and an
    existing target too (an immutable file or folder cannot be swapped out). A one-line
    UserError says which and that ``what`` did not start."""
    for path in map(Path, paths):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            _probe(path.parent)
            if path.is_dir() and not path.is_symlink():
                _probe(path)
            elif path.exists():
                _replaceable(path)
        except OSError as exc:
            raise UserError(f"cannot write {path} ({exc.strerror or first_line(exc)}): "
                            f"{what} did not start; free space or fix the permissions") \
                from None


def _replaceable(path: Path) -> None:
    """An existing file is replaced by a rename, which needs only its folder writable:
    a read-only file (as DVC's hardlink or symlink cache types leave outputs) is fine,
    an immutable one (chattr +i: EPERM even for root) is not."""
    import errno

    try:
        os.close(os.open(path, os.O_WRONLY))  # no write: content and mtime stay
    except PermissionError as exc:
        if exc.errno == errno.EPERM:
            raise


def _probe(folder: Path) -> None:
    fd, name = tempfile.mkstemp(prefix=f".probe.{os.getpid()}.", suffix=".part", dir=folder)
    try:
        os.write(fd, b"\0" * PROBE_BYTES)
        os.fsync(fd)
    finally:
        os.close(fd)
        os.unlink(name)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def finite_or_null(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float as None: JSON has no NaN or Infinity
    (Python writes them, strict parsers refuse them). In this project's files a null
    means "not computed" (no validation split) or "not finite" (a diverged value)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_null(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite_or_null(v) for v in obj]
    return obj


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Strict JSON (see ``finite_or_null``), atomically."""
    text = json.dumps(finite_or_null(obj), indent=2, sort_keys=False, allow_nan=False)
    write_text(path, text + "\n")


def save_torch(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save``, atomically, and the same bytes for the same tensors.

    Saved to a path, torch names the archive's folder inside the zip after the file,
    here a random temporary name: every run would then write a different file, and DVC
    would see new data where nothing changed. Saved to an open file, it is "archive".
    """
    import torch

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)


class Unreadable(Exception):
    """A file that ``load_torch`` could not read as plain tensors and containers; its
    message is one line."""


def load_torch(path: str | os.PathLike[str]) -> Any:
    """``torch.load`` with ``weights_only=True`` (no pickled code runs) onto the CPU;
    every way a file can be damaged is an ``Unreadable`` with a one-line message."""
    import torch

    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except (OSError, RuntimeError, EOFError, ValueError, KeyError, TypeError, AttributeError,
            zipfile.BadZipFile, pickle.UnpicklingError) as exc:
        raise Unreadable(first_line(exc, 120)) from None
