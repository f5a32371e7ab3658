# productvlm: `make demo` runs the whole pipeline on CPU; `make test` runs the test suite.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU torch wheel first, so nothing later resolves torch to a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0

.PHONY: venv demo test test-slow lint bench clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[serve,dev]"
	touch $@

venv: $(BIN)/.installed
	@# Debian chromium for the browser test (never `playwright install`); it skips without one
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium) || echo "chromium not installed: tests/serving/test_browser.py will skip"

demo: venv
	$(BIN)/productvlm demo --out runs/demo

test: venv
	$(BIN)/python -m pytest -q

test-slow: venv
	$(BIN)/python -m pytest -q -m slow

lint: venv
	$(BIN)/ruff check src tests bench
	$(BIN)/lint-imports --no-cache pyproject.toml

clean:
	rm -rf runs .pytest_cache
