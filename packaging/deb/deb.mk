# Debian packages of the agent; -include'd by the top-level Makefile.
#
#   make deb [ARCH=amd64|arm64] [VERSION=x.y.z] [SRC=path]   -> dist/harmony-agent_<version>_<arch>.deb
#   make debs            both architectures
#   make deb-lint        lintian over dist/*.deb (errors fail)
#   make deb-lock        re-pin packaging/deb/requirements.lock from pyproject.toml
#   make test-packaging  unit, lint, systemd and reproducibility tests of the package
#   make test-e2e        the booted-Debian end-to-end scenarios (root, systemd-nspawn)
# See docs/packaging.md.

DEB_DIR := $(patsubst %/,%,$(dir $(lastword $(MAKEFILE_LIST))))
ARCH ?= amd64
SRC ?= .
VERSION ?= $(shell sed -n 's/^__version__ = "\(.*\)"$$/\1/p' $(SRC)/agent/version.py)
DEB_OUT ?= dist
# Only used to fetch wheels with pip; the venv's if there is one.
DEB_PYTHON ?= $(if $(wildcard $(VENV)/bin/python),$(VENV)/bin/python,python3)

.PHONY: deb debs deb-lint deb-lock test-packaging test-e2e

deb:
	ARCH=$(ARCH) VERSION=$(VERSION) SRC=$(SRC) OUT=$(DEB_OUT) PYTHON=$(DEB_PYTHON) \
		bash $(DEB_DIR)/build.sh

debs:
	$(MAKE) deb ARCH=amd64
	$(MAKE) deb ARCH=arm64

deb-lint:
	lintian --fail-on error,warning $(DEB_OUT)/*.deb

deb-lock:
	$(DEB_PYTHON) $(DEB_DIR)/lock.py

test-packaging: venv
	$(BIN)/pytest -q -p no:cacheprovider tests/packaging

test-e2e: venv
	$(BIN)/pytest -q -p no:cacheprovider -m e2e tests/e2e
