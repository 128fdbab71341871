"""Fetch the four Fashion-MNIST files from an ordered list of sources, verified and atomic.

Each file is tried against every source in order: a local directory, a ``file://`` URL or
an ``http(s)://`` URL. A file is accepted only when the SHA-256 of its *decompressed*
bytes matches params (re-compressed mirrors such as Debian's package pass, corrupt or
truncated copies do not), and it reaches the output directory by an atomic rename.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from urllib.parse import unquote, urljoin, urlparse

import requests
from requests.adapters import HTTPAdapter
from tqdm import tqdm
from urllib3.util.retry import Retry

from fmnist.common import UserError, atomic_path
from fmnist.data import IdxError, sha256_content
from fmnist.params import RAW_FILES, DownloadParams

CHUNK = 1 << 16


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


def _copy_local(src: Path, tmp: Path) -> None:
    if not src.is_file():
        raise SourceError(f"{src} not found")
    try:
        shutil.copyfile(src, tmp)
    except OSError as exc:
        raise SourceError(f"cannot read {src}: {exc.strerror or exc}") from None


def _copy_http(url: str, tmp: Path, session: requests.Session, timeout: float) -> None:
    try:
        with session.get(url, stream=True, timeout=(timeout, timeout)) as resp:
            if resp.status_code != 200:
                raise SourceError(f"HTTP {resp.status_code} {resp.reason}")
            total = int(resp.headers.get("Content-Length", 0)) or None
            with open(tmp, "wb") as f, tqdm(total=total, unit="B", unit_scale=True,
                                            unit_divisor=1024, desc=Path(url).name,
                                            leave=False, disable=None) as bar:
                for chunk in resp.iter_content(CHUNK):
                    f.write(chunk)
                    bar.update(len(chunk))
    except requests.exceptions.Timeout:
        raise SourceError(f"timed out after {timeout:g} s") from None
    except requests.exceptions.RetryError as exc:
        raise SourceError(f"gave up after retries ({exc})") from None
    except requests.exceptions.ConnectionError as exc:
        raise SourceError(f"unreachable ({type(exc).__name__})") from None
    except requests.exceptions.RequestException as exc:
        raise SourceError(f"request failed ({exc})") from None


def fetch_one(source: str, name: str, tmp: Path, session: requests.Session,
              timeout: float) -> None:
    """Copy ``name`` from ``source`` into ``tmp`` (not yet verified)."""
    parsed = urlparse(source)
    if parsed.scheme in ("http", "https"):
        _copy_http(urljoin(source.rstrip("/") + "/", name), tmp, session, timeout)
    elif parsed.scheme == "file":
        _copy_local(Path(unquote(parsed.path)) / name, tmp)
    else:
        _copy_local(Path(source) / name, tmp)


def verify(path: Path, expected: str) -> None:
    try:
        digest = sha256_content(path)
    except IdxError as exc:
        raise SourceError(str(exc).split(": ", 1)[-1]) from None
    if digest != expected:
        raise SourceError(f"checksum mismatch (sha256 {digest[:12]}…, "
                          f"expected {expected[:12]}…)")


def download(params: DownloadParams, out_dir: str | os.PathLike[str]) -> dict[str, str]:
    """Fetch every raw file into ``out_dir``; return file name -> the source it came from."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    session = http_session(params.retries, params.backoff)
    used: dict[str, str] = {}
    for name in RAW_FILES:
        failures = []
        for source in params.sources:
            try:
                with atomic_path(out / name) as tmp:
                    fetch_one(source, name, tmp, session, params.timeout)
                    verify(tmp, params.sha256[name])
            except SourceError as reason:
                failures.append((source, str(reason)))
                print(f"{name}: {source}: {reason}; trying the next source", file=sys.stderr)
                continue
            used[name] = source
            print(f"{name}: ok from {source}")
            break
        else:
            listing = "; ".join(f"{src}: {why}" for src, why in failures)
            raise UserError(f"{name}: every source failed: {listing}")
    return used
