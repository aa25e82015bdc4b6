# Two commands on a fresh machine: `make demo` and `make test`. Each creates .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The dataset for `make demo`: an official CIFAR-10 archive, an image-folder tree or its .tar.gz.
DATA ?= cifar10

.PHONY: venv demo test test-slow test-data lint format bench clean readme

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch and torchvision first, pinned: they install from this machine's disk.
	$(BIN)/pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/cnnlab models
	$(BIN)/cnnlab summary alexnet

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/pytest -q

test-slow: $(STAMP)
	$(BIN)/pytest -q -m slow

test-data: $(STAMP)
	$(BIN)/pytest -q -m realdata

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

format: $(STAMP)
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache

# Regenerate the README's model table from the cards (tests fail when it is stale).
readme: $(STAMP)
	$(BIN)/python -c "import cnnlab; from cnnlab.analysis.tables import update_readme; update_readme('README.md', cnnlab.list_models())"
