# The two set-up commands (see README): `make run` and `make test`.
# Both create .venv from nothing. torch is installed first as the pinned CPU
# build: any looser torch requirement would pull a multi-GB CUDA build.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.13.0
# CI adds `deploy` (kubernetes-validate for tests/test_deploy.py: a 22 MB wheel of schemas).
EXTRAS ?= dev,ocr,lora,tracking

.PHONY: install run test test-all lint bench clean sky-venv

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check $(TORCH)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[$(EXTRAS)]'
	touch $@

install: $(VENV)/.installed

# SkyPilot in a venv of its own (optional, not in CI: its install is large and slow): it pins
# click<8.2, which our stack's huggingface-hub outgrew, and launching recipes needs neither
# torch nor spotlight. tests/test_deploy.py loads deploy/skypilot/ with SkyPilot's own loaders
# (deploy/check_skypilot.py) once .venv-sky/.installed exists; its structural checks of the
# same files run everywhere.
SKY_VENV ?= .venv-sky
SKYPILOT ?= skypilot==0.14.1
$(SKY_VENV)/.installed:
	$(PYTHON) -m venv $(SKY_VENV)
	$(SKY_VENV)/bin/pip install -q --disable-pip-version-check $(SKYPILOT)
	touch $@

sky-venv: $(SKY_VENV)/.installed

run: install
	$(VENV)/bin/spotlight run $(ARGS)

# pytest exits 5 when it collected nothing: that is a broken suite, not a pass.
test: install
	@$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; exit $$rc

test-all: install
	$(MAKE) test PYTEST_ARGS="-m 'slow or not slow'"

# Every benchmark, each writing benchmarks/results/<name>.json (ARGS=--quick for a smoke run).
bench: install
	@set -e; for script in scripts/bench_*.py; do echo "== $$script"; $(PY) $$script $(ARGS); done

lint: install
	$(VENV)/bin/ruff check spotlight scripts tests
	$(VENV)/bin/ruff format --check spotlight scripts tests
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) $(SKY_VENV) .pytest_cache .mypy_cache .ruff_cache
