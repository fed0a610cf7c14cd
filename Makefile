# Everything a fresh machine needs: `make demo` and `make test`.
VENV   := .venv
PYTHON ?= python3
CARGO  ?= cargo

.PHONY: all build emulator test demo bench lint fmt clean

all: build

build:
	$(CARGO) build

# The emulator (moto) lives in a project-local virtualenv; nothing is installed system-wide.
$(VENV)/.installed: tests/harness/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r tests/harness/requirements.txt
	touch $@

emulator: $(VENV)/.installed

# The initializer's own tests (on a temporary directory), then the Rust unit tests and the
# end-to-end tests of the real binary against the emulator.
test: $(VENV)/.installed
	cd lambda-efs-init && ../$(VENV)/bin/python -m unittest -v test_handler 2>&1
	$(CARGO) test --workspace --no-fail-fast

# The full life of a stack against a local emulator: up -> status -> up (converged) -> down.
demo: $(VENV)/.installed build
	scripts/demo.sh

# up, status, a converged up and down under the harness's latency model: wall time against the
# critical path, API calls by service. Figures go to bench/results.json.
bench: $(VENV)/.installed build
	$(VENV)/bin/python bench/bench.py

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt

clean:
	rm -rf $(VENV) target
