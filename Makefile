# Two commands set everything up on a fresh machine:
#   make demo   installs bioviz into .venv and runs `bioviz demo` on the embedded data
#   make test   installs bioviz with its test tools into .venv, lints, and runs the whole suite
PYTHON ?= python3
VENV ?= .venv
# torch: where no GPU is present take the CPU build this kind of machine keeps on disk
# (torch==2.13.0); elsewhere any recent torch. Override with `make demo TORCH=...`.
TORCH ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo "torch>=2.3" || echo "torch==2.13.0")
PIP = $(VENV)/bin/pip

$(VENV)/.installed: pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(VENV)/bin/python -c "import torch" 2>/dev/null || $(PIP) install -q "$(TORCH)"
	$(PIP) install -q -e ".[dev]"
	touch $@

# A second interpreter with transformers<5 runs AntiBERTy's own code, the reference that the
# real-weights test compares bioviz's activations with (antiberty 0.1.3 needs transformers<5;
# kept apart so users are not held to it).
VENV_AB ?= .venv-antiberty
$(VENV_AB)/.installed:
	test -x $(VENV_AB)/bin/python || $(PYTHON) -m venv $(VENV_AB)
	$(VENV_AB)/bin/python -c "import torch" 2>/dev/null || $(VENV_AB)/bin/pip install -q "$(TORCH)"
	$(VENV_AB)/bin/pip install -q "transformers==4.56.2" "antiberty==0.1.3" numpy
	touch $@

# enformer-pytorch 0.8.12 pins transformers==4.56.2 but runs under transformers 5: install it
# and what it imports without letting pip downgrade transformers (users: the same line).
ENFORMER = enformer-pytorch==0.8.12 discrete-key-value-bottleneck-pytorch==0.1.1 \
	vector-quantize-pytorch==1.32.0 einx==0.4.3 frozendict==2.5.1 loguru==0.7.3 \
	torch-einops-utils==0.2.0 polars==2.1.0 polars-runtime-32==2.1.0 pyfaidx==0.9.2.2
$(VENV)/.enformer: $(VENV)/.installed
	$(PIP) install -q --no-deps $(ENFORMER)
	touch $@

.PHONY: demo test bench browser
demo: $(VENV)/.installed
	$(VENV)/bin/bioviz demo

# scGPT's own model source is the reference the scGPT adapter test compares with; its pins
# (torchtext, an old torch) cannot install here and its model files need none of them: no deps
$(VENV)/.scgpt: $(VENV)/.installed
	$(PIP) install -q --no-deps scgpt==0.2.4
	touch $@

# The report's browser tests open pages in Debian's headless Chromium and turn the PDF into
# pictures with poppler's pdftoppm: installed here when missing and apt-get can (as root);
# elsewhere those tests are skipped and say why.
browser:
	@if ! command -v chromium >/dev/null 2>&1 || ! command -v pdftoppm >/dev/null 2>&1; then \
		if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium poppler-utils >/dev/null; \
		else echo "chromium/pdftoppm missing and apt-get unavailable: the browser tests will be skipped"; fi; \
	fi

test: $(VENV)/.installed $(VENV)/.enformer $(VENV)/.scgpt $(VENV_AB)/.installed browser
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest -q

bench: $(VENV)/.installed $(VENV)/.enformer $(VENV)/.scgpt
	$(PIP) install -q -e ".[dev,bench]"
	# dictionary-learning's own pins would replace torch with a CUDA build: no deps
	$(PIP) install -q --no-deps dictionary-learning==0.1.0
	$(VENV)/bin/python benchmarks/run.py
