# Everything a fresh machine needs: `make demo` and `make test`.
VENV   := .venv
AUDIT_VENV := .venv-audit
PYTHON ?= python3
CARGO  ?= cargo

.PHONY: all build emulator test demo bench audit lint fmt clean

all: build

build:
	$(CARGO) build

# The emulator (moto) lives in a project-local virtualenv; nothing is installed system-wide.
$(VENV)/.installed: tests/harness/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r tests/harness/requirements.txt
	touch $@

emulator: $(VENV)/.installed

# The initializer's and the wake function's own tests, then the Rust unit tests and the
# end-to-end tests of the real binary against the emulator.
test: $(VENV)/.installed
	cd lambda-efs-init && ../$(VENV)/bin/python -m unittest -v test_handler 2>&1
	cd lambda-wake && ../$(VENV)/bin/python -m unittest -v test_handler 2>&1
	$(VENV)/bin/python -m unittest tests/harness/test_strict.py 2>&1
	@# cargo-nextest runs the test binaries side by side (cargo test runs them one after another,
	@# and the end-to-end tests mostly wait on the model's clock); cargo test where it is missing.
	if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) nextest run --workspace --no-fail-fast && $(CARGO) test --workspace --doc; \
	else \
		$(CARGO) test --workspace --no-fail-fast; \
	fi

# The full life of a stack against a local emulator: up -> status -> up (converged) -> down.
demo: $(VENV)/.installed build
	scripts/demo.sh

# up, status, a converged up and down under the harness's latency model: wall time against the
# critical path, API calls by service. Figures go to bench/results.json.
bench: $(VENV)/.installed build
	$(VENV)/bin/python bench/bench.py

# Prowler (its own virtualenv: it pins a boto3 moto's must not get) against an HTTPS + SSH stack
# the tool builds on the emulator, default and strict profiles. Exits non-zero on a high or critical
# FAIL on the stack that README's "Accepted findings" does not list. Figures: target/audit/summary.json.
# One profile: make audit AUDIT_ARGS="--profile strict".
$(AUDIT_VENV)/.installed: tests/harness/audit-requirements.txt
	$(PYTHON) -m venv $(AUDIT_VENV)
	$(AUDIT_VENV)/bin/pip install --quiet --disable-pip-version-check -r tests/harness/audit-requirements.txt
	touch $@

audit: $(VENV)/.installed $(AUDIT_VENV)/.installed build
	$(AUDIT_VENV)/bin/python tests/harness/audit.py $(AUDIT_ARGS)

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt

clean:
	rm -rf $(VENV) $(AUDIT_VENV) target
