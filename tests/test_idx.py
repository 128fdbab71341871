import gzip

import numpy as np
import pytest

from fmnist.common import UserError
from fmnist.idx import IdxError, load_raw_split, parse_idx, read_idx, write_idx


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32,
                                   np.float64])
@pytest.mark.parametrize("suffix", [".gz", ""])
def test_round_trip(tmp_path, dtype, suffix):
    arr = (np.arange(2 * 3 * 4) - 7).astype(dtype).reshape(2, 3, 4)
    path = tmp_path / f"a-idx3{suffix}"
    write_idx(path, arr)
    back = read_idx(path)
    assert back.dtype == arr.dtype and back.shape == arr.shape
    np.testing.assert_array_equal(back, arr)
    raw = path.read_bytes()
    assert (raw[:2] == b"\x1f\x8b") == (suffix == ".gz")


def _idx_bytes(arr: np.ndarray) -> bytes:
    return (bytes([0, 0, 0x08, arr.ndim]) + np.asarray(arr.shape, ">u4").tobytes()
            + arr.astype(np.uint8).tobytes())


def test_header_is_big_endian():
    buf = _idx_bytes(np.zeros((2, 28, 28), np.uint8))
    assert buf[:4] == b"\x00\x00\x08\x03" and buf[4:8] == b"\x00\x00\x00\x02"
    assert parse_idx(buf, "x").shape == (2, 28, 28)


@pytest.mark.parametrize("mutate, message", [
    (lambda b: b"\x01\x02" + b[2:], "bad magic number"),
    (lambda b: b[:2] + b"\x07" + b[3:], "unknown IDX data type"),
    (lambda b: b[:-5], "truncated"),
    (lambda b: b + b"\x00", "trailing bytes"),
    (lambda b: b[:6], "truncated header"),
    (lambda b: b[:3], "too short"),
])
def test_malformed_files_name_the_file(tmp_path, mutate, message):
    path = tmp_path / "bad-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(mutate(_idx_bytes(np.zeros((3, 28, 28), np.uint8)))))
    with pytest.raises(IdxError, match=message) as exc:
        read_idx(path)
    assert str(path) in str(exc.value)
    assert isinstance(exc.value, UserError)


def test_corrupt_gzip(tmp_path):
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(b"\x00" * 100)[:-10])
    with pytest.raises(IdxError, match="corrupt gzip"):
        read_idx(path)


def _write_split(d, images, labels, prefix="train"):
    """As `download` stores a split: decompressed (``idx.raw_paths``)."""
    write_idx(d / f"{prefix}-images-idx3-ubyte", images)
    write_idx(d / f"{prefix}-labels-idx1-ubyte", labels)


def test_count_mismatch(tmp_path):
    _write_split(tmp_path, np.zeros((5, 28, 28), np.uint8), np.zeros(4, np.uint8))
    with pytest.raises(IdxError, match="4 labels for 5 images") as exc:
        load_raw_split(tmp_path, "train")
    assert f"{tmp_path}/train-labels-idx1-ubyte:" in str(exc.value)


def test_label_out_of_range(tmp_path):
    _write_split(tmp_path, np.zeros((3, 28, 28), np.uint8), np.array([0, 10, 2], np.uint8))
    with pytest.raises(IdxError, match=r"label 10 at index 1 is outside 0..9"):
        load_raw_split(tmp_path, "train")


def test_wrong_image_shape(tmp_path):
    _write_split(tmp_path, np.zeros((3, 27, 28), np.uint8), np.zeros(3, np.uint8))
    with pytest.raises(IdxError, match="28x28"):
        load_raw_split(tmp_path, "train")


def test_missing_file(tmp_path):
    with pytest.raises(IdxError, match="file not found"):
        load_raw_split(tmp_path, "t10k")
