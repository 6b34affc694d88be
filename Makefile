# Two set-up commands (README): `make demo` and `make test`. Both create .venv and install.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
# The CPU wheel that pip finds locally here; a looser pin pulls a multi-GB CUDA build.
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: install demo demo-reward demo-estimator demo-train test bench gpu-check clean

$(STAMP): pyproject.toml CMakeLists.txt $(wildcard csrc/*)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	DS_BUILD_OPS=0 $(PY) -m pip install -q -e ".[dev]"
	touch $@

install: $(STAMP)

# The main job on the embedded default, offline on CPU: reward table, similarity-estimator
# step (build -> fine-tune -> evaluate), then the tiny-cpu trainer (SFT warm start + GRPO).
demo: demo-reward demo-estimator demo-train

demo-reward: $(STAMP)
	$(PY) -m opgrpo_fast.demo

demo-estimator: $(STAMP)
	$(PY) -m opgrpo_fast.similarity.demo --out runs/demo/estimator

demo-train: $(STAMP)
	$(PY) -m opgrpo_fast.train.demo --output-dir runs/demo/train

test: $(STAMP)
	$(PY) -m pytest -q

# Kernel + end-to-end benchmarks (not part of make test); JSON under bench/results/.
bench: $(STAMP)
	$(PY) -m pytest bench/bench_*.py -q --benchmark-only --benchmark-json=bench/results/benchmarks.json

# On a CUDA machine only: build with CUDA, GPU tests, op benchmarks → one JSON report.
gpu-check:
	bash bench/gpu_check.sh

clean:
	rm -rf build $(VENV) .pytest_cache .benchmarks
