# segrepro: `make demo` (train + evaluate on the built-in synthetic data), `make test` and
# `make test-fast` (without the slow tests).
# Both create .venv if it is missing and install the package into it with the exact tested set
# (constraints.txt), with uv where it can be had and pip otherwise (.ci/install.py).
# The install runs again when pyproject.toml, constraints.txt or .ci/install.py is newer than the stamp.
VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.segrepro-installed
# CONSTRAINTS= (empty) installs against the torch already in the venv (another CUDA build): see the README
CONSTRAINTS ?= constraints.txt
INSTALLER   ?= auto
ARGS    ?=
# the paper tables: `make table-ssl-2 SCALE=mini SEEDS=3 ROWS=ce,ssl3` (segrepro reproduce; README)
SCALE   ?= paper
SEEDS   ?= 1
ROWS    ?=
TABLE_TARGETS := table-lad-1 table-lad-2 table-ssl-1 table-ssl-2 table-ssl-3 table-ssl-4 table-ssl-5 table-ssl-6
FIGURE_TARGETS := fig-ssl-3 fig-ssl-4

.PHONY: install constraints demo test test-fast bench-losses bench-crf gpu-check tensorboard clean tables $(TABLE_TARGETS) $(FIGURE_TARGETS)

$(STAMP): pyproject.toml $(CONSTRAINTS) .ci/install.py
	$(PYTHON) .ci/install.py --venv $(VENV) --constraints '$(CONSTRAINTS)' --installer $(INSTALLER)
	touch $(STAMP)

install: $(STAMP)  ## the venv and the package (INSTALLER=pip: without uv)

constraints: $(STAMP)  ## write constraints.txt from the venv (after a change of pyproject.toml's dependencies)
	{ printf '%s\n' \
	  '# The exact set that `make demo`, `make test` and CI install (.ci/install.py -c constraints.txt):' \
	  '# `pip freeze --all` of a venv that passed the test suite, less segrepro. pyproject.toml holds the' \
	  '# ranges; regenerate this with `make constraints`. uv is the installer .ci/install.py puts in the venv.'; \
	  $(PY) -m pip freeze --all --exclude-editable | grep -v -i '^segrepro[= ]'; } > constraints.txt.tmp
	mv constraints.txt.tmp constraints.txt
	touch $(STAMP)

demo: $(STAMP)  ## train DeepLabV3+ ResNet-18 on synthetic data (CPU), evaluate, print the IoU table
	$(VENV)/bin/segrepro train $(ARGS)

test: $(STAMP)  ## the whole pytest suite
	$(VENV)/bin/pytest $(ARGS)

test-fast: $(STAMP)  ## the suite without the tests marked slow (subprocesses, long training runs): about 2.5 minutes
	$(VENV)/bin/pytest -m "not slow" $(ARGS)

bench-losses: $(STAMP)  ## time and memory of every loss against CE (add ARGS="--device cuda" on a GPU); glibc keeps freed memory
	$(PY) scripts/bench_losses.py --keep-memory $(ARGS)

bench-crf: $(STAMP)  ## dense-CRF seconds per image (VOC size, one core) and throughput over 1 and 2 worker processes
	$(PY) scripts/bench_crf.py $(ARGS)

gpu-check: $(STAMP)  ## the GPU check of issue 17, about 8 minutes on one GPU (ARGS="--device cpu --small": the CPU dry run)
	PYTHON=$(PY) bash scripts/gpu_check.sh $(ARGS)

# table-lad-1 -> segrepro reproduce table=lad_table1, ..., table-ssl-6 -> table=ssl_table6
$(TABLE_TARGETS): table-%: $(STAMP)  ## one paper table: SCALE=paper|mini|smoke, SEEDS=N, ROWS=a,b (runs/tables/<table>/<scale>/)
	$(VENV)/bin/segrepro reproduce table=$(subst -,_table,$*) scale=$(SCALE) seeds=$(SEEDS) $(if $(ROWS),rows=$(ROWS)) $(ARGS)

# fig-ssl-3 -> segrepro reproduce table=ssl_fig3, fig-ssl-4 -> table=ssl_fig4 (the runs of SSL Table 2's ssl3)
$(FIGURE_TARGETS): fig-ssl-%: $(STAMP)  ## one SSL figure: SCALE=paper|mini|smoke, SEEDS=N (runs/tables/ssl_fig<n>/<scale>/)
	$(VENV)/bin/segrepro reproduce table=ssl_fig$* scale=$(SCALE) seeds=$(SEEDS) $(ARGS)

tables: $(TABLE_TARGETS) $(FIGURE_TARGETS)  ## every paper table and figure, one after the other (make -k tables: go on past one that stops)

tensorboard: $(STAMP)
	$(VENV)/bin/tensorboard --logdir runs

clean:
	rm -rf runs .pytest_cache
