# Two commands on a fresh machine: `make demo` and `make test`. Each creates .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The dataset for `make demo`: "cifar10" (the official archive, downloaded into the cache), or a
# path to a local copy: the official archive or folder, an image-folder tree or its .tar.gz.
# Where the workplace's JPEG copy of CIFAR-10 sits beside the project, it is the default.
SHARED_CIFAR := ../shared/datasets/cifar10-jpeg.tar.gz
DATA ?= $(if $(wildcard $(SHARED_CIFAR)),$(SHARED_CIFAR),cifar10)
# The demo's training time in minutes: it measures its step here and sizes the run to fit.
DEMO_MINUTES ?= 3

.PHONY: venv demo test test-slow test-data test-gpu lint format bench clean readme

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch and torchvision first, pinned: they install from this machine's disk.
	$(BIN)/pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install --quiet -e '.[test,export]'
	touch $(STAMP)

# The main job: train resnet20 for about DEMO_MINUTES with the fast recipe, in the precision
# this machine runs fastest, and print the test error.
demo: $(STAMP)
	$(BIN)/cnnlab train resnet20 --data $(DATA) --recipe fast --time $(DEMO_MINUTES) \
		--out runs/demo-$$(date +%Y%m%d-%H%M%S)

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/pytest -q

test-slow: $(STAMP)
	$(BIN)/pytest -q -m slow

test-data: $(STAMP)
	$(BIN)/pytest -q -m realdata

# The CUDA-graph step's tests; they skip where there is no CUDA GPU.
test-gpu: $(STAMP)
	$(BIN)/pytest -q -m gpu

# Training throughput against the usual CIFAR script: where it ran, images/s, ratios, the
# fraction of the measured peak and the issue-7 targets.
bench: $(STAMP)
	$(BIN)/python benchmarks/train_throughput.py --models resnet20 resnet56 \
		$(if $(wildcard $(SHARED_CIFAR)),--data $(SHARED_CIFAR))

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
