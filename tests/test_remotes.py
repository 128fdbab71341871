"""Sharing for real: an S3 remote against moto's S3 server, the run-cache shared between
clones, and the models fetched as registered artifacts."""

import hashlib
import json
import subprocess

import pytest

from fmnist.package import FILES
from tests.support import commit, free_port, output_hashes, ran
from tools.repo import run

pytestmark = pytest.mark.e2e


@pytest.fixture
def s3_server():
    """moto's S3 server on 127.0.0.1 (as DVC's own dvc-s3 tests use), stopped after."""
    from moto.server import ThreadedMotoServer
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def s3_env(env: dict[str, str]) -> dict[str, str]:
    """Credentials from the environment only; no metadata-service lookups."""
    return {**env, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}


def test_s3_remote_push_status_and_pull(committed_repo, tmp_path, s3_server):
    import boto3
    repo, env, expected = committed_repo
    env = s3_env(env)
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1",
                 aws_access_key_id="testing",
                 aws_secret_access_key="testing").create_bucket(Bucket="fmnist")
    run(["dvc", "remote", "add", "-d", "s3", "s3://fmnist/cache"], repo, env)
    run(["dvc", "remote", "modify", "s3", "endpointurl", s3_server], repo, env)
    run(["dvc", "remote", "modify", "s3", "verify", "true"], repo, env)
    commit(repo, env, "remote")
    assert "testing" not in (repo / ".dvc/config").read_text()  # no credential written
    pushed = run(["dvc", "push", "-r", "s3"], repo, env).stdout
    assert "pushed" in pushed
    status = run(["dvc", "status", "-c", "-r", "s3", "--json"], repo, env).stdout
    assert json.loads(status) == {}, status

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], tmp_path, env)
    run(["dvc", "pull", "-r", "s3"], clone, env)
    assert json.loads(run(["dvc", "status", "--json"], clone, env).stdout) == {}
    assert ran(run(["dvc", "repro"], clone, env).stdout) == set()
    assert output_hashes(clone) == expected and len(expected) > 15

    # and without credentials it fails fast instead of asking a metadata service
    bare = {k: v for k, v in env.items() if not k.startswith("AWS_ACCESS")
            and not k.startswith("AWS_SECRET")}
    bare["AWS_EC2_METADATA_DISABLED"] = "true"
    bare["AWS_SHARED_CREDENTIALS_FILE"] = str(tmp_path / "none")
    # something not yet on the remote, so that the push must write there
    (repo / "extra.txt").write_text("not pushed yet")
    run(["dvc", "add", "-q", "extra.txt"], repo, env)
    try:  # a lookup of a metadata service would hang: the timeout fails the test
        fail = subprocess.run(["dvc", "push", "-r", "s3"], cwd=repo, env=bare, text=True,
                              capture_output=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("dvc push without credentials hung instead of failing")
    assert fail.returncode != 0, fail.stdout + fail.stderr
    left = run(["dvc", "status", "-c", "-r", "s3"], repo, env).stdout  # with credentials
    assert "new:" in left and "extra.txt" in left, left  # nothing went up without them


def test_run_cache_shared_between_clones(committed_repo, tmp_path):
    """Clone A runs an experiment and pushes the run-cache; clone B restores the same
    experiment's training from it instead of training again."""
    repo, env, _ = committed_repo
    storage = tmp_path / "storage"
    run(["dvc", "remote", "add", "-d", "local", str(storage)], repo, env)
    commit(repo, env, "remote")
    run(["dvc", "push"], repo, env)
    # the training stage alone (its upstream is unchanged): no evaluate, no ONNX exports
    exp_a = run(["dvc", "exp", "run", "train-lenet", "-S", "train_lenet.lr=0.02"], repo,
                env).stdout
    assert ran(exp_a) == {"train-lenet"}, exp_a
    lenet_a = output_hashes(repo)["models/lenet/model.pt"]
    run(["dvc", "push", "--run-cache"], repo, env)

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], tmp_path, env)
    run(["dvc", "pull", "--run-cache"], clone, env)
    # --pull: fetch the outputs that a run-cache entry names, which the clone's own
    # commits do not reference
    exp_b = run(["dvc", "exp", "run", "train-lenet", "--pull", "-S", "train_lenet.lr=0.02"],
                clone, env).stdout
    assert "train-lenet" not in ran(exp_b), exp_b
    assert "Stage 'train-lenet' is cached - skipping run" in exp_b, exp_b
    assert output_hashes(clone)["models/lenet/model.pt"] == lenet_a


def test_models_are_artifacts_dvc_can_get(committed_repo, tmp_path):
    repo, env, expected = committed_repo
    storage = tmp_path / "storage"
    run(["dvc", "remote", "add", "-d", "local", str(storage)], repo, env)
    commit(repo, env, "remote")
    run(["dvc", "push"], repo, env)
    # a version is registered as GTO does it: an annotated git tag NAME@vX.Y.Z
    run(["git", "tag", "-a", "lenet@v1.0.0", "-m", "Registering artifact lenet version v1.0.0"],
        repo, env)
    out = tmp_path / "got"
    run(["dvc", "artifacts", "get", str(repo), "lenet", "-o", str(out)], tmp_path, env)
    # the release folder: the weights, meta.json, the ONNX export and the card
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)
    for name in FILES:
        got = hashlib.sha256((out / name).read_bytes()).hexdigest()
        assert got == expected[f"dist/lenet/{name}"]
    assert expected["dist/lenet/model.pt"] == expected["models/lenet/model.pt"]
    card = (out / "README.md").read_text()  # the Hub metadata header, then the title
    assert card.startswith("---\nlicense: mit\n") and "\n# LeNet-5 for Fashion-MNIST\n" in card
