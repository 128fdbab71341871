"""Images from files, as the models see them: 28x28, 8-bit grayscale, a light garment on
a black background.

Fashion-MNIST's images were made from product photos in steps its README documents:
trim the background, resize the longer edge to 28, centre on a 28x28 canvas, negate the
intensities (the photos have light backgrounds), 8-bit grayscale. ``to_dataset_form``
applies those steps to any picture (less the data set's sharpening); an image already in
that form (28x28, a dark border) is used exactly as it is.

Reads PNG, JPEG and every other format Pillow knows, ``.npy`` arrays and IDX files (the
data set's own format, gzip or not). No torch here: ``fmnist predict`` on an ONNX file
runs without it.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from fmnist.common import UserError, first_line
from fmnist.idx import GZIP_MAGIC, parse_idx, read_bytes

SIDE = 28
# A picture's pixel cap: Pillow decodes a small file of a huge image into gigabytes (a
# decompression bomb). 40 megapixels is a large phone photo.
MAX_PIXELS = 40_000_000
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff",
                            ".webp", ".pgm", ".ppm", ".pbm", ".pnm"})
ARRAY_SUFFIXES = frozenset({".npy"})
IDX_MAGIC_IMAGES = b"\x00\x00\x08\x03"  # uint8, three dimensions
# Border brighter than this (of 255): a light background, negated like the data set's
LIGHT_BACKGROUND = 127
# A pixel this far from the background belongs to the object (trimming)
TRIM_TOLERANCE = 24


class BadInput(Exception):
    """One input that cannot be read; its message is one line, without the path."""


@dataclass(frozen=True)
class Item:
    name: str          # the file, with [i] for the i-th image of an array or IDX file
    image: np.ndarray  # uint8 (28, 28)


def border(a: np.ndarray) -> np.ndarray:
    return np.concatenate([a[0], a[-1], a[1:-1, 0], a[1:-1, -1]])


def in_dataset_form(a: np.ndarray) -> bool:
    return a.shape == (SIDE, SIDE) and float(np.median(border(a))) <= LIGHT_BACKGROUND


def to_dataset_form(a: np.ndarray) -> np.ndarray:
    """A uint8 grayscale picture of any size -> uint8 (28, 28), the data set's way."""
    if in_dataset_form(a):
        return a
    if float(np.median(border(a))) > LIGHT_BACKGROUND:
        a = 255 - a  # a dark garment on a light background -> light on dark
    background = int(np.median(border(a)))
    # the background to black, then trim to the object's bounding box
    a = np.clip(a.astype(np.int16) - background, 0, 255).astype(np.uint8)
    rows = np.flatnonzero((a > TRIM_TOLERANCE).any(axis=1))
    cols = np.flatnonzero((a > TRIM_TOLERANCE).any(axis=0))
    if len(rows) and len(cols):
        a = a[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    h, w = a.shape
    scale = SIDE / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = np.asarray(Image.fromarray(a).resize(size, Image.Resampling.LANCZOS))
    out = np.zeros((SIDE, SIDE), dtype=np.uint8)
    top, left = (SIDE - small.shape[0]) // 2, (SIDE - small.shape[1]) // 2
    out[top:top + small.shape[0], left:left + small.shape[1]] = small
    return out


def _grayscale(im: Image.Image) -> np.ndarray:
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        # a cut-out product photo: transparent is background, made white like a studio's
        im = im.convert("RGBA")
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, im)
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        # by the format's range, as 8-bit images keep theirs: 16-bit (and 32-bit integer
        # images holding 16-bit data, as Pillow opens 16-bit PNGs) over 65535, floats
        # over [0, 1]
        a = np.asarray(im, dtype=np.float64)
        if not np.isfinite(a).all():
            raise BadInput("non-finite pixel values")
        full = 1.0 if im.mode == "F" else 65535.0
        return np.round(np.clip(a / full, 0, 1) * 255).astype(np.uint8)
    return np.asarray(ImageOps.grayscale(im) if im.mode != "L" else im, dtype=np.uint8)


def read_picture(path: Path, convert: bool) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as im:
                w, h = im.size
                if w * h > MAX_PIXELS:
                    raise BadInput(f"{w}x{h} pixels, over the cap of {MAX_PIXELS:,} "
                                   "(a decompression bomb?)")
                im.load()
                a = _grayscale(ImageOps.exif_transpose(im))  # a phone photo, upright
        except PermissionError:
            raise BadInput("permission denied") from None
        except UnidentifiedImageError:
            raise BadInput("not an image file (no format Pillow knows)") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise BadInput(f"over the cap of {MAX_PIXELS:,} pixels "
                           "(a decompression bomb?)") from None
        except (OSError, ValueError, SyntaxError) as exc:
            raise BadInput(f"truncated or corrupt image ({first_line(exc, 80)})") from None
    return to_dataset_form(a) if convert else _as_is(a)


def _as_is(a: np.ndarray) -> np.ndarray:
    if a.shape != (SIDE, SIDE):
        raise BadInput(f"{a.shape[1]}x{a.shape[0]} pixels: --no-convert needs 28x28 "
                       "images")
    return a


SHAPES = "(H, W), (H, W, 3) or (H, W, 4) for one image, (N, H, W) for several"
MIN_SIDE = 8  # an (N, H, W) stack narrower than this is read as channels, not images


def _stack(a: np.ndarray, what: str) -> np.ndarray:
    """An array of one grayscale image (H, W), one colour image (H, W, 3 or 4) or many
    grayscale images (N, H, W) -> (N, H, W) uint8."""
    if a.size == 0:
        raise BadInput(f"{what}: empty, shape {a.shape}")
    if a.ndim == 3 and (a.shape[-1] == 1 or (a.shape[-1] not in (3, 4)
                                            and a.shape[-1] < MIN_SIDE)):
        # one (H, W, C) image of C channels, or N images C pixels wide?
        raise BadInput(f"{what}: shape {a.shape} is ambiguous (channels, or images "
                       f"{a.shape[-1]} pixels wide?); accepted: {SHAPES}")
    if a.dtype.kind == "f":
        if not np.isfinite(a).all() or a.min() < 0 or a.max() > 1:
            raise BadInput(f"{what}: float pixels must lie in [0, 1]")
        a = np.round(a * 255)
    elif a.dtype.kind in "iu":
        if a.size and (a.min() < 0 or a.max() > 255):
            raise BadInput(f"{what}: integer pixels must lie in 0..255")
    else:
        raise BadInput(f"{what}: {a.dtype} pixels (need uint8, or floats in [0, 1])")
    if a.ndim == 3 and a.shape[-1] in (3, 4) and 0 not in a.shape:  # one colour image
        mode = "RGB" if a.shape[-1] == 3 else "RGBA"
        a = _grayscale(Image.fromarray(a.astype(np.uint8), mode))
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3 or 0 in a.shape:
        raise BadInput(f"{what}: shape {a.shape}; accepted: {SHAPES}")
    return a.astype(np.uint8)


def _items(path: Path, stack: np.ndarray, convert: bool) -> list[Item]:
    one = len(stack) == 1
    return [Item(shown(path) if one else f"{shown(path)}[{i}]",
                 to_dataset_form(a) if convert else _as_is(a)) for i, a in enumerate(stack)]


def is_idx(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:2] == GZIP_MAGIC:
        return "idx" in path.name.lower() or path.name.endswith("-ubyte.gz")
    return head == IDX_MAGIC_IMAGES


def read_file(path: Path, convert: bool = True) -> list[Item]:
    """Every image in one file, or ``BadInput``."""
    try:
        if path.suffix.lower() in ARRAY_SUFFIXES:
            try:
                a = np.load(path, allow_pickle=False)
            except (ValueError, OSError, EOFError) as exc:
                raise BadInput(f"not a .npy array ({first_line(exc, 80)})") from None
            return _items(path, _stack(a, "array"), convert)
        if path.suffix.lower() not in IMAGE_SUFFIXES and is_idx(path):
            try:
                a = parse_idx(read_bytes(path), path.name)
            except UserError as exc:
                why = str(exc).removeprefix(f"{path}: ").removeprefix(f"{path.name}: ")
                raise BadInput(f"malformed IDX file ({first_line(why, 100)})") from None
            return _items(path, _stack(a, "IDX file"), convert)
        return [Item(shown(path), read_picture(path, convert))]
    except PermissionError:
        raise BadInput("permission denied") from None
    except IsADirectoryError:
        raise BadInput("a folder") from None
    except FileNotFoundError:
        raise BadInput("no such file") from None


def readable(path: Path) -> bool:
    """Is a file in a folder one ``read_inputs`` takes (by its name)?"""
    name = path.name.lower()
    return (path.suffix.lower() in IMAGE_SUFFIXES | ARRAY_SUFFIXES
            or "-ubyte" in name or name.endswith((".idx", ".idx.gz")))


def expand(paths: Iterable[str | Path]) -> Iterator[tuple[Path, str | None]]:
    """Each file to read, or (a path, why there is nothing to read there)."""
    for path in map(Path, paths):
        try:
            path.lstat()
        except FileNotFoundError:
            yield path, "no such file"
            continue
        except OSError as exc:  # a name too long, a loop of symlinks
            yield path, exc.strerror or first_line(exc)
            continue
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and readable(p))
            if not files:
                yield path, "a folder with no images"
            for f in files:
                yield f, None
        elif not path.exists():
            yield path, "no such file"
        elif not path.is_file():
            yield path, "not a regular file (a FIFO, device or socket is not read)"
        else:
            yield path, None


def read_inputs(paths: Iterable[str | Path],
                convert: bool = True) -> tuple[list[Item], list[str]]:
    """The images in ``paths`` (files and folders), and one line per input that failed."""
    items: list[Item] = []
    errors: list[str] = []
    for path, problem in expand(paths):
        if problem:
            errors.append(f"{shown(path)}: {problem}")
            continue
        try:
            items += read_file(path, convert)
        except BadInput as exc:
            errors.append(f"{shown(path)}: {exc}")
        except Exception as exc:  # noqa: BLE001 - whatever one input does is its own line
            errors.append(f"{shown(path)}: cannot read ({type(exc).__name__}: "
                          f"{first_line(exc, 80)})")
    return items, errors


def shown(path: Path | str) -> str:
    """A file name as it can be printed: bytes that are not UTF-8 escaped, a long name
    shortened in the middle."""
    from fmnist.files import shorten

    return shorten(os.fsencode(str(path)).decode("utf-8", "backslashreplace"), 200)
