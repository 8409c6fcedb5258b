# dbslower: `make demo` and `make test` set everything up themselves (as root).
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup test unit demo bench clean

setup:
	bash scripts/setup.sh

test: setup
	$(PY) -m pytest -v -rs tests

unit: setup
	$(PY) -m pytest -v tests/unit

demo: setup
	$(PY) scripts/demo.py

bench: setup
	$(PY) bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build src/*.egg-info tests/fixtures/bin
