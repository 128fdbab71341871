"""The real Fashion-MNIST from the default local source (`make test` installs it)."""

import os
from pathlib import Path

import pytest

from fmnist.download import download
from fmnist.idx import load_raw_split
from fmnist.params import RAW_FILES, DownloadParams, load_section, read_params
from tools import ROOT

# params.yaml's first source: Debian's package dataset-fashion-mnist (the Makefile's
# DATA_DIR, which `make data` installs, must be the same folder)
LOCAL = Path(read_params(ROOT / "params.yaml")["download"]["sources"][0])

# .ci/run sets FMNIST_REAL_DATA=required where the Debian package exists (so `make test`
# installed it): there a missing file fails this test instead of skipping it.
pytestmark = pytest.mark.skipif(
    not (LOCAL / RAW_FILES[0]).exists() and os.environ.get("FMNIST_REAL_DATA") != "required",
    reason=f"real data not installed in {LOCAL}")


def test_default_source_verifies_and_counts(tmp_path):
    params = load_section("download", DownloadParams, ROOT / "params.yaml")
    assert f"DATA_DIR := {LOCAL}\n" in (ROOT / "Makefile").read_text()
    local_only = params.model_copy(update={"sources": [str(LOCAL)]})
    used = download(local_only, tmp_path)  # raises unless all four SHA-256s match
    assert set(used) == set(RAW_FILES)
    train_images, train_labels = load_raw_split(tmp_path, "train")
    test_images, test_labels = load_raw_split(tmp_path, "t10k")
    assert train_images.shape == (60000, 28, 28) and len(train_labels) == 60000
    assert test_images.shape == (10000, 28, 28) and len(test_labels) == 10000
    assert sorted(set(train_labels.tolist())) == list(range(10))
