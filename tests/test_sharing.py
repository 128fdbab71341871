"""Sharing through DVC remotes (local and a real SSH server), and experiment sweeps."""

import getpass
import hashlib
import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.support import commit_run, free_port, output_hashes, ran
from tools.repo import run

pytestmark = pytest.mark.e2e
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"








def check_clone(origin, clone, env, expected, remote_setup=()):
    run(["git", "clone", "-q", str(origin), str(clone)], origin.parent, env)
    for cmd in remote_setup:
        run(cmd, clone, env)
    run(["dvc", "pull"], clone, env)
    status = run(["dvc", "status", "--json"], clone, env).stdout
    assert json.loads(status) == {}, status
    assert ran(run(["dvc", "repro"], clone, env).stdout) == set()
    assert output_hashes(clone) == expected
    assert len(expected) > 15


def test_fresh_clone_pulls_and_reruns_nothing(dvc_repo, tmp_path):
    repo, env = dvc_repo
    storage = tmp_path / "storage"
    run(["dvc", "remote", "add", "-d", "local", str(storage)], repo, env)
    expected = commit_run(repo, env)
    pushed = run(["dvc", "push"], repo, env).stdout
    assert "pushed" in pushed
    assert any(storage.rglob("*"))
    check_clone(repo, tmp_path / "clone", env, expected)


def test_project_default_remote_is_outside_the_repo():
    from tools import ROOT
    config = (ROOT / ".dvc" / "config").read_text()
    assert "remote = local" in config
    url = next(line.split("=", 1)[1].strip() for line in config.splitlines()
               if line.strip().startswith("url"))
    resolved = (ROOT / ".dvc" / url).resolve()
    assert not resolved.is_relative_to(ROOT.resolve())


# ---------------------------------------------------------------- SSH


@pytest.fixture
def sshd(tmp_path):
    """A real OpenSSH server on 127.0.0.1 with its own keys; stopped after the test."""
    if not os.path.exists(SSHD):
        pytest.fail(f"{SSHD} not found: `make test` installs openssh-server")
    d = tmp_path / "sshd"
    d.mkdir()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", d / "host_key"],
                   check=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", d / "client_key"],
                   check=True)
    shutil.copy(d / "client_key.pub", d / "authorized_keys")
    port = free_port()
    (d / "sshd_config").write_text(f"""
Port {port}
ListenAddress 127.0.0.1
HostKey {d / 'host_key'}
PidFile {d / 'sshd.pid'}
AuthorizedKeysFile {d / 'authorized_keys'}
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
Subsystem sftp internal-sftp
""")
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", exist_ok=True)
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"sshd did not start: {proc.communicate()[0]!r}")
            time.sleep(0.1)
    host_pub = (d / "host_key.pub").read_text().split()
    known_hosts = f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n"
    try:
        yield {"port": port, "key": d / "client_key", "known_hosts": known_hosts}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_ssh_remote_push_and_pull(dvc_repo, tmp_path, sshd):
    repo, env = dvc_repo
    ssh_dir = Path(env["HOME"]) / ".ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    (ssh_dir / "known_hosts").write_text(sshd["known_hosts"])
    remote_path = tmp_path / "ssh-storage"
    credentials = [
        ["dvc", "remote", "modify", "--local", "ssh", "user", getpass.getuser()],
        ["dvc", "remote", "modify", "--local", "ssh", "keyfile", str(sshd["key"])],
    ]
    run(["dvc", "remote", "add", "-d", "ssh",
         f"ssh://127.0.0.1:{sshd['port']}{remote_path}"], repo, env)
    for cmd in credentials:
        run(cmd, repo, env)
    assert "keyfile" not in (repo / ".dvc/config").read_text()
    assert "keyfile" in (repo / ".dvc/config.local").read_text()
    expected = commit_run(repo, env)
    run(["dvc", "push"], repo, env)
    assert any(p.is_file() for p in remote_path.rglob("*"))
    check_clone(repo, tmp_path / "clone", env, expected, remote_setup=credentials)


# ---------------------------------------------------------------- experiments


def test_queued_experiments(dvc_repo):
    repo, env = dvc_repo
    commit_run(repo, env)
    for lr in ("0.001", "0.01"):
        run(["dvc", "exp", "run", "--queue", "-S", f"train_lenet.lr={lr}"], repo, env)
    run(["dvc", "queue", "start", "-j", "1"], repo, env)
    deadline = time.monotonic() + 600
    while True:
        status = run(["dvc", "queue", "status"], repo, env).stdout
        if "Queued" not in status and "Running" not in status:
            break
        assert time.monotonic() < deadline, status
        time.sleep(2)
    assert status.count("Success") == 2, status
    shown = json.loads(run(["dvc", "exp", "show", "--json"], repo, env).stdout)
    exps = [e for rev in shown for e in (rev.get("experiments") or [])]
    results = {}
    for exp in exps:
        for ex in exp.get("revs", []):
            data = ex.get("data", {})
            lr = data["params"]["params.yaml"]["data"]["train_lenet"]["lr"]
            results[lr] = data["metrics"]["metrics/lenet.json"]["data"]["test"]["accuracy"]
    assert set(results) == {0.001, 0.01}, shown
    assert all(0 <= acc <= 1 for acc in results.values())


def test_corrupt_object_in_the_remote_fails_the_pull(dvc_repo, tmp_path):
    """With `verify` on (as the project's remote has it), `dvc pull` re-hashes what it
    downloads: a corrupted object fails the pull, and nothing corrupt reaches the clone."""
    repo, env = dvc_repo
    storage = tmp_path / "storage"
    run(["dvc", "remote", "add", "-d", "local", str(storage)], repo, env)
    run(["dvc", "remote", "modify", "local", "verify", "true"], repo, env)
    expected = commit_run(repo, env)
    run(["dvc", "push"], repo, env)
    # flip bytes in the object that holds the LeNet's weights
    weights_md5 = hashlib.md5((repo / "models/lenet/model.pt").read_bytes()).hexdigest()
    obj = storage / "files" / "md5" / weights_md5[:2] / weights_md5[2:]
    data = bytearray(obj.read_bytes())
    data[len(data) // 2] ^= 0xFF
    obj.chmod(0o644)
    obj.write_bytes(bytes(data))

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], tmp_path, env)
    pull = run(["dvc", "pull"], clone, env, check=False)
    assert pull.returncode != 0, pull.stdout
    weights = clone / "models/lenet/model.pt"
    assert not weights.exists() or \
        hashlib.sha256(weights.read_bytes()).hexdigest() == expected["models/lenet/model.pt"]
    status = run(["dvc", "status", "--json"], clone, env).stdout
    assert "train-lenet" in json.loads(status), status  # not silently clean


def test_project_remote_verifies_downloads():
    from tools import ROOT
    config = (ROOT / ".dvc" / "config").read_text()
    assert "verify = true" in config
