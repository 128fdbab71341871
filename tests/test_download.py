import shutil

import pytest
from conftest import run_stage, set_params

from fmnist.common import UserError
from fmnist.download import download
from fmnist.params import RAW_FILES, DownloadParams


def params(sources, sha, **kw) -> DownloadParams:
    return DownloadParams(sources=sources, sha256=sha, timeout=kw.get("timeout", 5),
                          retries=kw.get("retries", 0), backoff=kw.get("backoff", 0))


def leftovers(out):
    return sorted(p.name for p in out.iterdir()) if out.exists() else []


def test_http_source(tmp_path, synthetic, http_server):
    src, sha = synthetic
    server = http_server(src)
    used = download(params([server.url], sha), tmp_path / "raw")
    assert used == {name: server.url for name in RAW_FILES}
    for name in RAW_FILES:
        assert (tmp_path / "raw" / name).read_bytes() == (src / name).read_bytes()
    assert leftovers(tmp_path / "raw") == sorted(RAW_FILES)


def test_local_dir_and_file_url(tmp_path, synthetic):
    src, sha = synthetic
    assert set(download(params([str(src)], sha), tmp_path / "a").values()) == {str(src)}
    url = src.as_uri()
    assert set(download(params([url], sha), tmp_path / "b").values()) == {url}


def test_first_source_down_second_used(tmp_path, synthetic, http_server, capsys):
    src, sha = synthetic
    good = http_server(src)
    dead = http_server(tmp_path)  # serves an empty folder: every file is a 404
    missing_dir = str(tmp_path / "nowhere")
    used = download(params([missing_dir, dead.url, good.url], sha), tmp_path / "raw")
    assert set(used.values()) == {good.url}
    err = capsys.readouterr().err
    assert f"{missing_dir}: " in err and "not found" in err
    assert "HTTP 404" in err


def test_unreachable_port(tmp_path, synthetic):
    src, sha = synthetic
    import socket
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    used = download(params([f"http://127.0.0.1:{port}/", str(src)], sha), tmp_path / "raw")
    assert set(used.values()) == {str(src)}


def test_transient_errors_are_retried(tmp_path, synthetic, http_server):
    src, sha = synthetic
    server = http_server(src)
    server.fail[RAW_FILES[0]] = [503, 503]
    used = download(params([server.url], sha, retries=3, backoff=0.01), tmp_path / "raw")
    assert used[RAW_FILES[0]] == server.url
    assert server.hits.count(RAW_FILES[0]) == 3


def test_corrupted_file_rejected_nothing_left(tmp_path, synthetic, http_server):
    src, sha = synthetic
    bad = tmp_path / "bad"
    shutil.copytree(src, bad)
    data = bytearray((bad / RAW_FILES[1]).read_bytes())
    data[-12] ^= 0xFF  # flips a byte of the gzip payload
    (bad / RAW_FILES[1]).write_bytes(bytes(data))
    server = http_server(bad)
    out = tmp_path / "raw"
    with pytest.raises(UserError, match=RAW_FILES[1]):
        download(params([server.url], sha), out)
    assert RAW_FILES[1] not in leftovers(out)
    assert not [n for n in leftovers(out) if n.endswith(".part")]


def test_wrong_checksum_falls_through(tmp_path, synthetic, http_server, capsys):
    src, sha = synthetic
    other = tmp_path / "other"
    other.mkdir()
    for name in RAW_FILES:  # well-formed files, wrong content
        shutil.copy(src / name, other / name)
    shutil.copy(src / RAW_FILES[2], other / RAW_FILES[0])
    used = download(params([str(other), str(src)], sha), tmp_path / "raw")
    assert used[RAW_FILES[0]] == str(src) and used[RAW_FILES[1]] == str(other)
    assert "checksum mismatch" in capsys.readouterr().err


def test_all_sources_fail_stage_exit(workdir, http_server):
    dead = http_server(workdir / "stages")
    set_params(workdir, {"download": {"sources": [str(workdir / "nope"), dead.url]}})
    proc = run_stage(workdir, "stages/download.py")
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: train-images-idx3-ubyte.gz: every source failed")
    assert str(workdir / "nope") in last and f"{dead.url}: HTTP 404" in last
    assert "Traceback" not in proc.stderr
    assert leftovers(workdir / "data" / "raw") == []


def test_stage_success(workdir):
    proc = run_stage(workdir, "stages/download.py")
    assert proc.returncode == 0, proc.stderr
    assert leftovers(workdir / "data" / "raw") == sorted(RAW_FILES)
