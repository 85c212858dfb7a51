# MusicLM toolkit. Two commands on a fresh machine: `make demo` (main job) and `make test`.
SHELL := /bin/bash
PY := .venv/bin/python
VENV_STAMP := .venv/.installed
SIZE ?= small
DEMO ?= data/demo
RUNS ?= runs
BUNDLE ?= $(RUNS)/bundle
DATASET ?= $(DEMO)/train
OUT ?= $(RUNS)/tokens
DATA ?= $(OUT)
STAGE ?= coarse
TOKENIZER ?= soundstream
PROMPT ?= a slow Bach chorale played on a church organ
SECONDS ?= 10
ARGS ?=
# Beam runner of the fit and tokenize pipelines: direct (DirectRunner, multi-processing) or
# portable (PortableRunner against Beam's job service + an SDK worker pool on loopback).
RUNNER ?= direct
PIPELINE_direct := $(PY) -m
PIPELINE_portable := $(PY) -m musiclm.pipelines.portable
PIPELINE = $(or $(PIPELINE_$(RUNNER)),$(error RUNNER=$(RUNNER): use RUNNER=direct or RUNNER=portable))
SYSTEM_PACKAGES := fluidsynth fluid-soundfont-gm openttd-openmsx wesnoth-1.16-music singularity-music ffmpeg

.PHONY: install system-deps test lint demo-data tokenizers train-tokenizer tokenize train-stage sample demo bench clean

install: $(VENV_STAMP)  ## a .venv with the toolkit and every dependency, pinned

$(VENV_STAMP): setup.cfg pyproject.toml
	python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,demo]'
	touch $@

system-deps:  ## Debian packages for the demo music (fluidsynth, soundfonts, game music) and Opus
	@missing=$$(for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then \
	    echo "Missing Debian packages: $$missing. Install them as root: apt-get install $$missing"; exit 1; \
	  fi; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi

test: install system-deps  ## style checks, then the whole test suite (slow end-to-end tests included)
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	$(PY) -m pytest

lint: install  ## fix what ruff can fix, then format
	.venv/bin/ruff check --fix .
	.venv/bin/ruff format .

demo-data: install system-deps  ## build the bundled demo music (rendered MIDI + recorded game music) into $(DEMO)
	$(PY) -m musiclm.pipelines.demo_data --out $(DEMO) $(ARGS)

train-tokenizer: install  ## train one tokenizer model: TOKENIZER=soundstream|semantic|mulan SIZE=tiny|small|paper
	$(PY) -m musiclm.training.cli tokenizer-$(TOKENIZER) --config configs/tokenizers/$(TOKENIZER)/$(SIZE).yaml \
	  --data.root $(DATASET) --trainer.default_root_dir $(RUNS)/tokenizers/$(TOKENIZER) $(ARGS)

tokenizers: install  ## train the three tokenizers, fit k-means/RVQ codebooks, write the bundle to $(BUNDLE) (RUNNER=direct|portable)
	$(MAKE) train-tokenizer TOKENIZER=soundstream
	$(MAKE) train-tokenizer TOKENIZER=semantic
	$(MAKE) train-tokenizer TOKENIZER=mulan
	$(PIPELINE) musiclm.pipelines.fit_cli --dataset $(DATASET) --runs $(RUNS)/tokenizers --size $(SIZE) --out $(BUNDLE) $(ARGS)

tokenize: install  ## tokenize DATASET into webdataset shards at OUT with the bundle at BUNDLE (RUNNER=direct|portable)
	$(PIPELINE) musiclm.pipelines.tokenize_cli --dataset $(DATASET) --bundle $(BUNDLE) --out $(OUT) \
	  --config configs/pipelines/tokenize/$(SIZE).yaml $(ARGS)

train-stage: install  ## train one stage on shards: STAGE=semantic|coarse|fine DATA=... SIZE=...
	$(PY) -m musiclm.training.cli stage-$(STAGE) --config configs/stages/$(SIZE).yaml \
	  --config configs/stages/$(STAGE)/$(SIZE).yaml \
	  --data.root $(DATA) --trainer.default_root_dir $(RUNS)/$(STAGE) $(ARGS)

sample: install  ## text -> music: PROMPT="..." SECONDS=10
	$(PY) -m musiclm.sampling.cli --bundle $(BUNDLE) --runs $(RUNS) --text "$(PROMPT)" \
	  --seconds $(SECONDS) --out $(RUNS)/samples/sample.wav $(ARGS)

demo: install system-deps  ## the main job: demo music -> tokenizers -> shards -> three stages -> samples -> report
	$(PY) -m musiclm.sampling.demo --demo $(DEMO) --runs $(RUNS) --size $(SIZE) $(ARGS)

bench: install  ## every benchmark under benchmarks/, JSON to $(RUNS)/bench
	mkdir -p $(RUNS)/bench
	for b in benchmarks/*.py; do $(PY) $$b | tee $(RUNS)/bench/$$(basename $$b .py).json; done

clean:  ## remove runs and caches (keeps .venv and data)
	rm -rf $(RUNS) .pytest_cache .ruff_cache
