# The three commands of the README's quick start, each self-contained on a fresh machine:
#   make run        create .venv, install, make sure the data source is there, dvc repro
#   make test       create .venv, install, run the whole test suite (about 6 minutes on 2 cores)
#   make reproduce  re-train the committed run in a temporary clone: identical bits, or a verdict
# Each is idempotent: a second call reuses the venv and the data. `make install` also
# puts the `fmnist` command into .venv/bin.

PYTHON   ?= python3
VENV     := .venv
BIN      := $(CURDIR)/$(VENV)/bin
DATA_DIR := /usr/share/datasets/fashion-mnist
STAMP    := $(VENV)/.installed
SUDO     := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

export PATH := $(BIN):$(PATH)
export DVC_NO_ANALYTICS := 1

.PHONY: run test test-fast bench lint data sshd install lock smoke reproduce check-lock plots seeds clean

# Params first: DVC removes a stage's outputs before running it, even when the stage
# then refuses its params
run: install data
	fmnist check-params
	dvc repro

# One worker per core (pytest-xdist); a module's tests stay on one worker, so that what
# a module builds once (its fixtures) is built once
test: install data sshd
	pytest -q -n auto --dist loadscope --durations=10

# The fast tier: unit tests on tiny synthetic data, no subprocesses, servers or training
test-fast: install
	pytest -q -m 'not e2e'

bench: install data
	dvc repro preprocess
	python -m tools.bench --json .bench/results.json

# The code, and the GitHub workflow: against GitHub's schema and a security linter,
# both offline (the schema ships with check-jsonschema; zizmor --offline asks no API).
lint: install
	ruff check src stages tests tools
	check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/ci.yml
	zizmor --offline --config .github/zizmor.yml .github/workflows/

# Does the committed dvc.lock hold this code's and params' results? No data needed;
# exit 1 naming each stale stage and why (CI runs it)
check-lock: install
	fmnist check-params
	python -m tools.check_lock

# `dvc plots diff $(REVS)` as one HTML page that draws with no network (each chart rendered
# to SVG here): `make plots`, `make plots REVS=main`
plots: install
	python -m tools.plots_page --out dvc_plots/offline.html $(REVS)

# Pipeline validation alone: all six stages with real `dvc repro` on tiny synthetic
# data in a temporary repo, `dvc dag`, every dep and out there, `dvc status` clean
smoke: install
	pytest -q tests/test_pipeline.py -k full_pipeline_then_nothing_reruns

# Re-train the committed run from scratch in a temporary clone: per stage `identical`
# (the hashes in dvc.lock), else `equivalent`, `inconclusive` or `different` (the paired
# accuracy difference's 90% interval against a ±0.005 margin, on the committed
# predictions): `make reproduce` (LeNet), `make reproduce STAGES="train-lenet
# train-alexnet"`.
reproduce: install data
	fmnist reproduce $(if $(STAGES),--stages $(STAGES))

install: $(STAMP)

# Exactly requirements.lock: every package at its locked version, each file checked
# against its hash, nothing resolved; then the project itself, with no dependencies.
# uv installs, from pip's own sources (a fresh venv here: 21 s; pip took 141-156 s);
# pip installs uv itself, from the lock's lines for it. uv also compiles the packages'
# bytecode (about 20 s), which pip does by default and uv does not: where
# PYTHONDONTWRITEBYTECODE is set (as on this machine kind) every `dvc`, stage and test
# process would otherwise compile torch, scikit-learn and DVC anew, seconds each.
$(STAMP): pyproject.toml requirements.lock
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m tools.lock --uv-requirement > $(VENV)/uv-requirement.txt
	$(VENV)/bin/python -m pip install -q --require-hashes --no-deps -r $(VENV)/uv-requirement.txt
	$(VENV)/bin/uv pip install -q --python $(VENV)/bin/python --require-hashes --no-deps \
		--compile-bytecode $$($(VENV)/bin/python -m tools.lock --uv-sources) -r requirements.lock
	$(VENV)/bin/uv pip install -q --python $(VENV)/bin/python --no-deps --no-build-isolation -e .
	$(VENV)/bin/python -m tools.lock --check --allow-extra
	touch $@

# Re-resolve requirements.lock after editing pyproject.toml's pins (uv, from pip's sources)
lock: install
	python -m tools.lock

# The real data from Debian's package, where apt is there and the data is not.
data:
	@if [ ! -f $(DATA_DIR)/train-images-idx3-ubyte.gz ] && command -v apt-get >/dev/null; then \
		echo "installing dataset-fashion-mnist into $(DATA_DIR)"; \
		($(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q dataset-fashion-mnist) \
		|| echo "warning: dataset-fashion-mnist not installed; download falls back to HTTP"; \
	fi

# The committed recipes with more seeds, as DVC experiments run one at a time in the
# background; then `python -m tools.seeds` and `python -m tools.readme` (docs/experiments.md)
SEEDS ?= 2,3,4,5
seeds: install data
	$(foreach m,lenet alexnet,dvc exp run evaluate --queue -S 'train_$(m).seed=$(SEEDS)' &&) true
	dvc queue start -j 1

# OpenSSH's server binary, for the test of the SSH remote (the test starts its own sshd).
sshd:
	@if [ ! -x /usr/sbin/sshd ] && command -v apt-get >/dev/null; then \
		$(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q openssh-server; \
	fi

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache state .bench
