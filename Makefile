# Two commands for a newcomer: `make demo` and `make test`. Both bootstrap .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test proof bench venv clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# CPU torch first, so sentence-transformers never pulls a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[model,embedded,async,web,test]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/semsearch demo

test: $(STAMP)
	.ci/test-deps
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

# Each README guarantee broken on purpose, one at a time: its tests must go red (tests/mutations.py).
proof: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python tests/proof.py

bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python bench/worker_throughput.py
	HF_HUB_OFFLINE=1 $(BIN)/python bench/freshness.py
	HF_HUB_OFFLINE=1 $(BIN)/python bench/trigger_overhead.py
	HF_HUB_OFFLINE=1 $(BIN)/python bench/async_search.py
	HF_HUB_OFFLINE=1 $(BIN)/python bench/quality.py

clean:
	rm -rf $(VENV)
