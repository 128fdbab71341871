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

import tools.seeds
from tests.support import commit, free_port, output_hashes, ran
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


def test_fresh_clone_pulls_and_reruns_nothing(committed_repo, tmp_path):
    repo, env, expected = committed_repo
    storage = tmp_path / "storage"
    run(["dvc", "remote", "add", "-d", "local", str(storage)], repo, env)
    commit(repo, env, "remote")
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


def test_ssh_remote_push_and_pull(committed_repo, tmp_path, sshd):
    repo, env, expected = committed_repo
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
    commit(repo, env, "remote")
    run(["dvc", "push"], repo, env)
    assert any(p.is_file() for p in remote_path.rglob("*"))
    check_clone(repo, tmp_path / "clone", env, expected, remote_setup=credentials)


# ---------------------------------------------------------------- experiments


# An AlexNet slow enough (several seconds an epoch) for `dvc exp show` to see epoch 1
WATCHED = ["train_alexnet.epochs=2", "train_alexnet.batch_size=2", "train_alexnet.lr=0.002",
           "train_alexnet.arch.channels=[48,96,96,96,96]", "train_alexnet.arch.fc=512"]


def experiments(repo, env, timeout: float | None = None) -> dict[str, dict] | None:
    """name -> {state, params, metrics} of every experiment `dvc exp show` lists; None
    where it did not answer within ``timeout`` (DVC 3.67's `exp show` can hang when it
    reads an experiment's git objects while the queue is cleaning them up)."""
    try:
        proc = subprocess.run(["dvc", "exp", "show", "--json"], cwd=repo, env=env,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    if proc.returncode != 0:
        if timeout is None:
            raise RuntimeError(proc.stdout + proc.stderr)
        return None
    return {e["name"]: e for e in tools.seeds.experiments(json.loads(proc.stdout))}


def test_a_sweep_watched_live_then_shared_through_git(committed_repo, tmp_path):
    """A grid of two LeNet runs and a slower AlexNet run, queued and run one at a
    time: `dvc exp show` shows the AlexNet's epoch 1 while it trains (DVCLive's
    metrics, the very values its curves record), each run's params and final metrics
    after; then one run goes to a teammate through git and the DVC remote."""
    repo, env, _ = committed_repo
    origin, storage = tmp_path / "origin.git", tmp_path / "storage"
    run(["git", "init", "-q", "--bare", "-b", "main", str(origin)], tmp_path, env)
    run(["git", "remote", "add", "origin", str(origin)], repo, env)
    run(["dvc", "remote", "add", "-d", "local", str(storage)], repo, env)
    commit(repo, env, "remote")
    run(["git", "push", "-q", "origin", "main"], repo, env)

    # up to evaluate: what the grid compares (package's ONNX exports would add minutes)
    run(["dvc", "exp", "run", "--queue", "evaluate", "-S", "train_lenet.lr=0.005,0.02"],
        repo, env)
    run(["dvc", "exp", "run", "--queue", "evaluate", "-n", "watched",
         *(arg for kv in WATCHED for arg in ("-S", kv))], repo, env)
    # the worker outlives `dvc queue start`: its output must not hold our pipes open
    subprocess.run(["dvc", "queue", "start", "-j", "1"], cwd=repo, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    live_key = "metrics/live/alexnet/metrics.json"
    # a queued run starts from the baseline's files: until its AlexNet stage has run an
    # epoch, `dvc exp show` shows the baseline's (1-epoch) metrics
    baseline = json.loads((repo / live_key).read_text())
    seen_running, deadline = [], time.monotonic() + 600
    while True:
        assert time.monotonic() < deadline, "the queue did not finish in 10 minutes"
        exps = experiments(repo, env, timeout=15)
        if exps is None:  # `exp show` hung or failed: ask again
            time.sleep(0.5)
            continue
        watched = exps.get("watched", {})
        live = watched.get("metrics", {}).get(live_key) or {}
        if watched.get("state") == "running" and live.get("epoch") == 1 and live != baseline:
            seen_running.append(live)
        if len(exps) == 3 and all(e["state"] in ("success", "failed") for e in exps.values()):
            break
        # each `exp show` costs a second of CPU the runs need: ask often only while the
        # watched run is in its first epochs
        time.sleep(0.5 if watched.get("state") == "running" and not seen_running else 3)
    assert {e["state"] for e in exps.values()} == {"success"}, exps
    for _ in range(5):  # the queue is done; its clean-up may still race `exp show`
        final_exps = experiments(repo, env, timeout=30)
        if final_exps is not None:
            break
    assert final_exps is not None, "`dvc exp show` did not answer"
    exps = final_exps

    # while it ran: epoch 1's values, those the run's own curves hold for epoch 1
    assert seen_running, "dvc exp show never showed the running AlexNet's epoch 1"
    final = exps["watched"]["metrics"][live_key]
    assert final["epoch"] == 2 and final["step"] == 1 and "val" in final
    run(["dvc", "exp", "apply", "watched"], repo, env)
    row1 = (repo / "metrics/curves/alexnet.tsv").read_text().splitlines()[1].split("\t")
    assert float(row1[1]) == pytest.approx(seen_running[0]["train"]["loss"], rel=1e-5)

    # the grid: two runs, their own lr, their own metrics
    grid = {e["params"]["train_lenet"]["lr"]: e["metrics"]["metrics/lenet.json"]
            for name, e in exps.items() if name != "watched"}
    assert set(grid) == {0.005, 0.02}
    assert grid[0.005]["test"] != grid[0.02]["test"]

    # shared: pushed to git and the DVC remote, pulled and applied by a teammate
    run(["git", "checkout", "-q", "--", "."], repo, env)
    run(["dvc", "exp", "push", "origin", "watched"], repo, env)
    clone = tmp_path / "teammate"
    run(["git", "clone", "-q", str(origin), str(clone)], tmp_path, env)
    assert "watched" in run(["dvc", "exp", "list", "origin"], clone, env).stdout
    run(["dvc", "exp", "pull", "origin", "watched"], clone, env)
    theirs = experiments(clone, env)["watched"]
    assert theirs["params"]["train_alexnet"]["lr"] == 0.002
    assert theirs["metrics"][live_key] == final
    run(["dvc", "exp", "apply", "watched"], clone, env)
    # restored, not trained
    assert ran(run(["dvc", "repro", "evaluate"], clone, env).stdout) == set()
    mine = output_hashes(repo)["models/alexnet/model.pt"]
    assert output_hashes(clone)["models/alexnet/model.pt"] == mine


def test_corrupt_object_in_the_remote_fails_the_pull(committed_repo, tmp_path):
    """With `verify` on (as the project's remote has it), `dvc pull` re-hashes what it
    downloads: a corrupted object fails the pull, and nothing corrupt reaches the clone."""
    repo, env, expected = committed_repo
    storage = tmp_path / "storage"
    run(["dvc", "remote", "add", "-d", "local", str(storage)], repo, env)
    run(["dvc", "remote", "modify", "local", "verify", "true"], repo, env)
    commit(repo, env, "remote")
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
