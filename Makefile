# segrepro: `make demo` (train + evaluate on the built-in synthetic data), `make test` and
# `make test-fast` (without the slow tests).
# Both create .venv if it is missing and install the package into it.
VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.segrepro-installed
ARGS    ?=

.PHONY: install demo test test-fast bench-losses bench-crf tensorboard clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)  ## train DeepLabV3+ ResNet-18 on synthetic data (CPU), evaluate, print the IoU table
	$(VENV)/bin/segrepro train $(ARGS)

test: $(STAMP)  ## the whole pytest suite
	$(VENV)/bin/pytest $(ARGS)

test-fast: $(STAMP)  ## the suite without the tests marked slow (subprocesses, long training runs): well under a minute
	$(VENV)/bin/pytest -m "not slow" $(ARGS)

bench-losses: $(STAMP)  ## time and memory of every loss against CE (add ARGS="--device cuda" on a GPU)
	$(PY) scripts/bench_losses.py $(ARGS)

bench-crf: $(STAMP)  ## dense-CRF seconds per image (VOC size, one core) and throughput over 1 and 2 worker processes
	$(PY) scripts/bench_crf.py $(ARGS)

tensorboard: $(STAMP)
	$(VENV)/bin/tensorboard --logdir runs

clean:
	rm -rf runs .pytest_cache
