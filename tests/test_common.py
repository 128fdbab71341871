"""The small shared pieces: one-line errors, atomic files, the seed derivation."""

import os

import pytest

from fmnist.common import first_line
from fmnist.files import Unreadable, atomic_dir, atomic_path, load_torch, save_torch
from fmnist.seeds import STREAMS, derive_seed


def test_first_line_of_an_exception_for_one_line_errors():
    assert first_line(ValueError("bad header\n  at byte 12\n")) == "bad header"
    assert first_line(RuntimeError("x" * 300), 80) == "x" * 80
    assert first_line(ValueError()) == "ValueError"  # no message: its type, not a crash
    assert first_line(RuntimeError("  \n")) == "RuntimeError"


def test_atomic_path_leaves_the_old_file_when_the_writer_fails(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["out.txt"]
    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new" and os.listdir(tmp_path) == ["out.txt"]


def test_atomic_dir_swaps_the_whole_folder_or_nothing(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "a").write_text("old a")
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "a").write_text("new a")
        raise RuntimeError("killed")
    assert sorted(os.listdir(target)) == ["a"] and (target / "a").read_text() == "old a"
    with atomic_dir(target) as tmp:
        (tmp / "b").write_text("b")
    assert sorted(os.listdir(target)) == ["b"]  # the old folder's files are gone
    assert sorted(os.listdir(tmp_path)) == ["model"]


def test_save_torch_writes_the_same_bytes_and_load_torch_refuses_code(tmp_path):
    import torch
    save_torch({"w": torch.arange(3)}, tmp_path / "a.pt")
    save_torch({"w": torch.arange(3)}, tmp_path / "b.pt")
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()
    assert torch.equal(load_torch(tmp_path / "a.pt")["w"], torch.arange(3))

    class RunsCode:
        def __reduce__(self):
            return (print, ("pickled code ran",))

    torch.save({"x": RunsCode()}, tmp_path / "bad.pt")
    with pytest.raises(Unreadable):
        load_torch(tmp_path / "bad.pt")
    (tmp_path / "short.pt").write_bytes((tmp_path / "a.pt").read_bytes()[:50])
    with pytest.raises(Unreadable):
        load_torch(tmp_path / "short.pt")


def test_derive_seed_is_a_pure_function_of_its_inputs():
    assert derive_seed(1, "order", 2, 0) == derive_seed(1, "order", 2, 0)
    seeds = {derive_seed(seed, stream, epoch, rank) for seed in (1, 2) for stream in STREAMS
             for epoch in (0, 1, 2) for rank in (0, 1)}
    assert len(seeds) == 2 * len(STREAMS) * 3 * 2  # every input changes the seed
    # nearby inputs stay apart: seed 1 epoch 2 is not seed 2 epoch 1
    assert derive_seed(1, "torch", 2) != derive_seed(2, "torch", 1)
    assert all(0 <= s < 2**63 for s in seeds)
    with pytest.raises(ValueError, match="unknown random stream"):
        derive_seed(1, "dropout")
