# dualenc: the two commands of the README.
#   make main   sets up .venv, then trains and evaluates on the embedded default dataset.
#   make test   sets up .venv, then runs the test suite in two worker processes (one takes
#               the README commands' file, the other the rest; see tests/conftest.py).
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: main test bench setup clean-venv

setup: $(STAMP)

$(STAMP): setup.py constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

main: $(STAMP)
	$(PY) -m dualenc.main $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile tests $(ARGS)

bench: $(STAMP)
	$(PY) benchmarks/encode.py
	$(PY) benchmarks/train_step.py

clean-venv:
	rm -rf $(VENV)
