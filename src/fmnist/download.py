"""Fetch the four Fashion-MNIST files from an ordered list of sources, verified, all or none.

Each file is tried against every source in order: a local directory, a ``file://`` URL or
an ``http(s)://`` URL. A file is accepted only when the SHA-256 of its *decompressed*
bytes matches params (re-compressed mirrors such as Debian's package pass, corrupt or
truncated copies do not). Every byte is streamed: read, decompressed and hashed in
chunks, with a cap on what is read, so a damaged or endless source costs a bounded
amount of memory and time and falls through to the next source. The output folder is
built aside and put in place only when all four files verify.

What is stored is the decompressed IDX file (``idx.raw_name``: the name less ``.gz``),
the very bytes that ``download.sha256`` pins: the official mirror, Debian's
re-compressed copy and any other faithful source give one folder and so one hash in
dvc.lock. A gzip written here would not do: its bytes depend on the zlib build (zlib,
zlib-ng) as well as on the level, so the hash would again depend on the machine.
"""

from __future__ import annotations

import hashlib
import os
import sys
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import unquote, urljoin, urlparse

import requests
from requests.adapters import HTTPAdapter
from tqdm import tqdm
from urllib3.util.retry import Retry

from fmnist.common import UserError
from fmnist.files import atomic_dir
from fmnist.idx import GZIP_MAGIC, raw_name
from fmnist.params import RAW_FILES, DownloadParams

CHUNK = 1 << 16
# No Fashion-MNIST file is larger than 47,040,016 bytes, compressed or not.
MAX_BYTES = 64 << 20


class SourceError(Exception):
    """One source failed for one file; the next source is tried."""


def http_session(retries: int, backoff: float) -> requests.Session:
    """A session that retries connection errors and transient statuses with backoff."""
    retry = Retry(
        total=retries,
        connect=retries,
        read=retries,
        status=retries,
        backoff_factor=backoff,
        status_forcelist=(429, 500, 502, 503, 504),
        allowed_methods=frozenset({"GET"}),
        raise_on_status=False,
    )
    session = requests.Session()
    adapter = HTTPAdapter(max_retries=retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def _local_chunks(src: Path) -> Iterator[bytes]:
    if not src.is_file():
        raise SourceError(f"{src} not found")
    try:
        with open(src, "rb") as f:
            yield from iter(lambda: f.read(CHUNK), b"")
    except OSError as exc:
        raise SourceError(f"cannot read {src}: {exc.strerror or exc}") from None


def _http_chunks(url: str, session: requests.Session, timeout: float) -> Iterator[bytes]:
    try:
        with session.get(url, stream=True, timeout=(timeout, timeout)) as resp:
            if resp.status_code != 200:
                raise SourceError(f"HTTP {resp.status_code} {resp.reason}")
            length = int(resp.headers.get("Content-Length") or 0)
            if length > MAX_BYTES:
                raise SourceError(f"announces {length:,} bytes, more than any "
                                  f"Fashion-MNIST file ({MAX_BYTES:,})")
            with tqdm(total=length or None, unit="B", unit_scale=True, unit_divisor=1024,
                      desc=Path(url).name, leave=False, disable=None) as bar:
                for chunk in resp.iter_content(CHUNK):
                    bar.update(len(chunk))
                    yield chunk
    except requests.exceptions.Timeout:
        raise SourceError(f"timed out after {timeout:g} s") from None
    except requests.exceptions.RetryError as exc:
        raise SourceError(f"gave up after retries ({exc})") from None
    except requests.exceptions.ConnectionError as exc:
        raise SourceError(f"unreachable or cut off ({type(exc).__name__})") from None
    except requests.exceptions.RequestException as exc:
        raise SourceError(f"request failed ({type(exc).__name__})") from None


def source_chunks(source: str, name: str, session: requests.Session,
                  timeout: float) -> Iterator[bytes]:
    """The raw bytes of ``name`` at ``source``, in chunks."""
    parsed = urlparse(source)
    if parsed.scheme in ("http", "https"):
        return _http_chunks(urljoin(source.rstrip("/") + "/", name), session, timeout)
    if parsed.scheme == "file":
        return _local_chunks(Path(unquote(parsed.path)) / name)
    return _local_chunks(Path(source) / name)


class ContentHash:
    """SHA-256 of a file's content, decompressing gzip (by magic) as the bytes arrive,
    and refusing more than ``MAX_BYTES`` either side of the decompression; each piece of
    content goes on to ``sink`` (the stored file)."""

    def __init__(self, sink: Callable[[bytes], object]) -> None:
        self.sink = sink
        self.sha = hashlib.sha256()
        self.raw = self.out = 0
        self.gzip: bool | None = None
        self.inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)

    def update(self, chunk: bytes) -> None:
        self.raw += len(chunk)
        if self.raw > MAX_BYTES:
            raise SourceError(f"more than {MAX_BYTES:,} bytes: not a Fashion-MNIST file")
        if self.gzip is None:
            self.gzip = chunk[:2] == GZIP_MAGIC
        if not self.gzip:
            self._emit(chunk)
            return
        data = chunk
        while data:
            try:
                out = self.inflate.decompress(data, MAX_BYTES - self.out + 1)
            except zlib.error as exc:
                raise SourceError(f"corrupt gzip stream ({exc})") from None
            self._emit(out)
            data = self.inflate.unconsumed_tail
            if self.inflate.eof and self.inflate.unused_data:  # a further gzip member
                data = self.inflate.unused_data + data
                self.inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)

    def _emit(self, data: bytes) -> None:
        self.out += len(data)
        if self.out > MAX_BYTES:
            raise SourceError(f"decompresses to more than {MAX_BYTES:,} bytes")
        self.sha.update(data)
        self.sink(data)

    def hexdigest(self) -> str:
        if self.gzip and not self.inflate.eof:
            raise SourceError("truncated gzip stream")
        return self.sha.hexdigest()


def fetch_verified(source: str, name: str, dest: Path, session: requests.Session,
                   params: DownloadParams) -> None:
    """Store ``name``'s content (decompressed) from ``source`` as ``dest`` and verify it;
    SourceError otherwise."""
    with open(dest, "wb") as f:
        content = ContentHash(f.write)
        for chunk in source_chunks(source, name, session, params.timeout):
            content.update(chunk)
    if content.raw == 0:
        raise SourceError("empty file")
    digest, expected = content.hexdigest(), params.sha256[name]
    if digest != expected:
        raise SourceError(f"checksum mismatch (sha256 {digest[:12]}…, "
                          f"expected {expected[:12]}…)")


def download(params: DownloadParams, out_dir: str | os.PathLike[str]) -> dict[str, str]:
    """Fetch every raw file into ``out_dir`` (all four, decompressed, or none); return
    file name (as the sources name it) -> the source it came from."""
    session = http_session(params.retries, params.backoff)
    used: dict[str, str] = {}
    with atomic_dir(out_dir) as tmp:
        for name in RAW_FILES:
            failures = []
            for source in params.sources:
                dest = tmp / raw_name(name)
                try:
                    fetch_verified(source, name, dest, session, params)
                except SourceError as reason:
                    dest.unlink(missing_ok=True)
                    failures.append(f"{source}: {reason}")
                    print(f"{name}: {source}: {reason}; trying the next source",
                          file=sys.stderr)
                    continue
                used[name] = source
                print(f"{name}: ok from {source}")
                break
            else:
                raise UserError(f"{name}: every source failed ({'; '.join(failures)}); "
                                f"nothing was written to {out_dir}")
    return used
