# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# CPU wheel for this kind of machine; GPU users install their own torch first and it is kept.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: setup browser lint format test test-fast test-unit demo bench app clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[interp,app,real,dev,probes,ray]"
	touch $@

# Debian's chromium: plotly's static PNG export (kaleido) and the browser test need it; tmux: the test that
# checks progress bars in a real terminal.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || echo "warning: could not install chromium; PNG export and browser tests will be skipped"; \
	  else echo "warning: chromium missing (sudo apt-get install chromium); PNG export and browser tests will be skipped"; fi; }
	@command -v tmux >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then (apt-get install -y -qq tmux >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq tmux >/dev/null)) || echo "warning: could not install tmux; the terminal progress test will be skipped"; \
	  else echo "warning: tmux missing (sudo apt-get install tmux); the terminal progress test will be skipped"; fi; }

# Lint and format gate: `make format` applies the formatter, `make lint` checks (and `make test` runs it).
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: setup browser lint
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -q -m "not slow and not browser" $(PYTEST_ARGS)

# Tiers (docs/CONTRIBUTING.md): unit is the inner loop; `make test` runs every tier.
test-unit: setup
	$(PY) -m pytest -q -m unit $(PYTEST_ARGS)

demo: setup browser
	$(VENV)/bin/memento-lens demo $(DEMO_ARGS)

bench: setup
	$(PY) -m benchmarks.run_all

app: setup
	$(VENV)/bin/memento-lens app

clean:
	rm -rf $(VENV) runs .pytest_cache
