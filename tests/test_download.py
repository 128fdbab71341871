import gzip
import shutil

import pytest

from fmnist.common import UserError
from fmnist.download import download
from fmnist.idx import raw_name
from fmnist.params import RAW_FILES, DownloadParams
from tests.support import recompressed, run_stage, set_params


def params(sources, sha, **kw) -> DownloadParams:
    return DownloadParams(sources=sources, sha256=sha, timeout=kw.get("timeout", 5),
                          retries=kw.get("retries", 0), backoff=kw.get("backoff", 0))


STORED = sorted(raw_name(n) for n in RAW_FILES)


def leftovers(out):
    return sorted(p.name for p in out.iterdir()) if out.exists() else []


def test_http_source(tmp_path, synthetic, http_server):
    src, sha = synthetic
    server = http_server(src)
    used = download(params([server.url], sha), tmp_path / "raw")
    assert used == {name: server.url for name in RAW_FILES}
    for name in RAW_FILES:  # stored decompressed: the bytes that params' SHA-256 pins
        assert (tmp_path / "raw" / raw_name(name)).read_bytes() == \
            gzip.decompress((src / name).read_bytes())
    assert leftovers(tmp_path / "raw") == STORED


def test_every_faithful_copy_stores_the_same_bytes(tmp_path, synthetic, http_server):
    """A directory of one gzip and a mirror of another (level 1, a name and a time in
    the header) differ in every compressed byte, yet give one stored folder: what DVC
    hashes for dvc.lock is the content, not how a source compressed it."""
    src, sha = synthetic
    mirror = recompressed(src, tmp_path / "mirror", level=1, mtime=1_234_567_890)
    assert all((mirror / n).read_bytes() != (src / n).read_bytes() for n in RAW_FILES)
    download(params([str(src)], sha), tmp_path / "a")
    download(params([http_server(mirror).url], sha), tmp_path / "b")
    a, b = ({p.name: p.read_bytes() for p in (tmp_path / d).iterdir()} for d in "ab")
    assert a == b and sorted(a) == STORED


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
    assert raw_name(RAW_FILES[1]) not in leftovers(out)
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
    proc = run_stage(workdir, "download")
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: train-images-idx3-ubyte.gz: every source failed")
    assert str(workdir / "nope") in last and f"{dead.url}: HTTP 404" in last
    assert "Traceback" not in proc.stderr
    assert leftovers(workdir / "data" / "raw") == []


@pytest.mark.e2e
def test_stage_success(workdir):
    proc = run_stage(workdir, "download")
    assert proc.returncode == 0, proc.stderr
    assert leftovers(workdir / "data" / "raw") == STORED


def damaged_copy(src, dst, name, at):
    """A copy of ``src`` in which one byte of ``name``'s gzip stream is flipped at ``at``."""
    shutil.copytree(src, dst)
    data = bytearray((dst / name).read_bytes())
    data[at] ^= 0xFF
    (dst / name).write_bytes(bytes(data))
    return dst


def test_gzip_damaged_in_the_middle_falls_through_to_the_next_source(
        tmp_path, synthetic, http_server, capsys):
    src, sha = synthetic
    name = RAW_FILES[0]
    bad = damaged_copy(src, tmp_path / "bad", name, len((src / name).read_bytes()) // 2)
    server = http_server(bad)
    used = download(params([server.url, str(src)], sha), tmp_path / "raw")
    assert used[name] == str(src) and used[RAW_FILES[1]] == server.url
    err = capsys.readouterr().err
    assert f"{name}: {server.url}: " in err
    assert "corrupt gzip stream" in err or "checksum mismatch" in err
    assert (tmp_path / "raw" / raw_name(name)).read_bytes() == \
        gzip.decompress((src / name).read_bytes())


def test_only_the_last_file_bad_leaves_nothing(tmp_path, synthetic):
    src, sha = synthetic
    bad = damaged_copy(src, tmp_path / "bad", RAW_FILES[-1], -12)
    out = tmp_path / "raw"
    with pytest.raises(UserError, match=rf"{RAW_FILES[-1]}: every source failed.*"
                                        r"nothing was written"):
        download(params([str(bad)], sha), out)
    assert not out.exists()
    assert list(tmp_path.glob(".raw*")) == []  # nothing aside either


def test_a_failed_download_keeps_the_previous_folder(tmp_path, synthetic):
    src, sha = synthetic
    out = tmp_path / "raw"
    download(params([str(src)], sha), out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    bad = damaged_copy(src, tmp_path / "bad", RAW_FILES[-1], -12)
    with pytest.raises(UserError):
        download(params([str(bad)], sha), out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_endless_body_is_cut_off_and_falls_through(tmp_path, synthetic, monkeypatch, capsys):
    import http.server
    import threading

    import fmnist.download as dl

    class Endless(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.end_headers()  # no Content-Length: a body that never ends
            try:
                while True:
                    self.wfile.write(b"\x1f\x8b" + b"\0" * 65534)
            except OSError:
                pass

        def log_message(self, *a):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Endless)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setattr(dl, "MAX_BYTES", 1 << 20)  # the synthetic files are smaller
        src, sha = synthetic
        url = f"http://127.0.0.1:{httpd.server_address[1]}/"
        used = download(params([url, str(src)], sha), tmp_path / "raw")
        assert set(used.values()) == {str(src)}
        err = capsys.readouterr().err
        assert "more than 1,048,576 bytes" in err or "corrupt gzip" in err
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_body_larger_than_any_fashion_mnist_file_is_refused(tmp_path, synthetic, capsys):
    src, sha = synthetic
    huge = tmp_path / "huge"
    shutil.copytree(src, huge)
    with open(huge / RAW_FILES[1], "wb") as f:  # 65 MB of zeros, not gzip
        f.truncate(65 << 20)
    used = download(params([str(huge), str(src)], sha), tmp_path / "raw")
    assert used[RAW_FILES[1]] == str(src)
    assert "more than 67,108,864 bytes" in capsys.readouterr().err
