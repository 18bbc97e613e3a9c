# bpfprof developer entry points. `make` alone lists them.
# setup, demo and test need root: they install OS packages and load BPF programs.

VENV   := .venv
BIN    := $(VENV)/bin
SETUP  := bash packaging/setup-host.sh
COV    := --cov=agent --cov=symbolizer --cov-report=term-missing --cov-fail-under=90

.DEFAULT_GOAL := help
.PHONY: help setup setup-test demo test test-systemd lint bench clean distclean

help: ## list the targets
	@awk -F ':.*## ' '/^[a-z][a-z-]*:.*## / { printf "  make %-11s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)

setup: ## install OS packages, kernel headers, tracefs and .venv (root; skips what is done)
	$(SETUP)

setup-test: ## setup, plus the test tools (go, elfutils, llvm, bpfcc-tools) and the [test] extra
	$(SETUP) --test

demo: setup ## record a 10 s system-wide CPU profile to profile.pb.gz, its flame graph and top functions
	$(BIN)/bpfprof record -d 10 -o profile.pb.gz
	$(BIN)/bpfprof flamegraph profile.pb.gz -o flamegraph.html
	$(BIN)/bpfprof top profile.pb.gz
	@echo "Flame graph: $(CURDIR)/flamegraph.html"

test: setup-test ## run the whole test suite (unit, BPF, end-to-end) with a 90% coverage gate
	$(BIN)/pytest $(COV)

# Not part of `make test` (CI runs it after): boots a Debian 12 container under
# systemd-nspawn, installs the unit with packaging/install.sh and drives it
# with systemctl. The container's root is cached in /var/cache/bpfprof-tests.
test-systemd: setup-test ## the unit under a real systemd in a Debian 12 container (root; ~1.5 min more the first time; CI runs it after `make test`)
	BPFPROF_TEST_SYSTEMD=1 $(BIN)/pytest -v -p no:cacheprovider tests/systemd

# Lint needs only the venv's tools, so it sets up just when they are missing
# and runs every linter before failing, to report everything at once.
lint: $(BIN)/ruff ## ruff check, ruff format --check, mypy --strict on agent/ and symbolizer/
	@status=0; \
	echo "$(BIN)/ruff check ."; $(BIN)/ruff check . || status=1; \
	echo "$(BIN)/ruff format --check ."; $(BIN)/ruff format --check . || status=1; \
	echo "$(BIN)/mypy agent symbolizer"; $(BIN)/mypy agent symbolizer || status=1; \
	exit $$status

$(BIN)/ruff:
	$(SETUP) --test

bench: setup-test ## run the benchmarks (bench/run.py; needs the --test tools)
	@test -f bench/run.py || { echo "make: bench/run.py does not exist yet" >&2; exit 1; }
	$(BIN)/python bench/run.py

clean: ## remove build output, caches and demo outputs (keeps .venv)
	rm -rf build dist .pytest_cache .mypy_cache .ruff_cache htmlcov .coverage .coverage.* \
		profile.pb.gz flamegraph.html *.egg-info
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

distclean: clean ## clean, and remove .venv too
	rm -rf $(VENV)
