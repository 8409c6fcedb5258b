# dbslower: `make demo` and `make test` set everything up themselves (as root).
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup test unit demo bench man deb soak clean

setup:
	bash scripts/setup.sh

test: setup
	$(PY) -m pytest -v -rs tests

unit: setup
	$(PY) -m pytest -v tests/unit

demo: setup
	$(PY) scripts/demo.py

man: setup
	$(PY) scripts/manpage.py build/dbslower.1

# build/dbslower_<version>_<arch>.deb (Debian's python3-bpfcc; see scripts/build_deb.sh)
deb: setup
	bash scripts/build_deb.sh

bench: setup
	$(PY) bench/run.py $(BENCH_ARGS)

# 30 minutes under ever-new statement shapes and connection churn (not in make test)
soak: setup
	$(PY) bench/soak.py $(SOAK_ARGS)

clean:
	rm -rf $(VENV) build src/*.egg-info tests/fixtures/bin
