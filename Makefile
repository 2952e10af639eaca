# Two commands for a newcomer: `make demo` and `make test`. Both bootstrap .venv.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.xsilo-installed
# The real-process tests partly wait on Flower's polling: three workers (one test file each
# at a time) keep two cores busy, in xdist's own file order (the most tests first). Running
# the real-process files first was measured no faster (CI runs vary by a minute or two) and
# put three federations on two cores at once for longer. PYTEST_ARGS= (empty): one by one.
PYTEST_ARGS ?= -n 3 --dist loadfile

export FLWR_TELEMETRY_ENABLED := 0
export FLWR_DISABLE_UPDATE_CHECK := 1

.PHONY: demo test venv lock clean wheelhouse cli-docs

venv: $(STAMP)

$(STAMP): pyproject.toml requirements.lock constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check \
		-c requirements.lock -c constraints.txt -e ".[dev,torch]" -e examples/strategy-plugin
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/xsilo demo

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

# docs/cli.md, every command and option, from the CLI itself (tests/test_cli_reference.py
# fails while it is stale).
cli-docs: $(STAMP)
	$(PY) -m federation.cli_reference

# Re-pin requirements.lock from the current venv (run after changing dependencies).
lock: $(STAMP)
	$(PY) -m pip freeze --exclude-editable | grep -v '^xsilo' > requirements.lock

# An air-gapped host's installation: xsilo and every dependency as wheels in one directory,
# with SHA256SUMS (docs/operations.md, "Installing on a host without internet"). Build it on a
# machine with the target's OS, CPU architecture and Python minor version, or say which with
# WHEELHOUSE_PIP_ARGS="--platform manylinux2014_x86_64 --python-version 3.11".
# WHEELHOUSE_EXTRAS="[torch]" adds the extras a silo's model needs.
WHEELHOUSE ?= wheelhouse
WHEELHOUSE_EXTRAS ?=
WHEELHOUSE_PIP_ARGS ?=

wheelhouse: | $(STAMP)
	mkdir -p $(WHEELHOUSE)
	rm -rf build $(WHEELHOUSE)/xsilo-*.whl
	$(PY) -m pip wheel --quiet --disable-pip-version-check --no-deps --no-build-isolation \
		-w $(WHEELHOUSE) .
	rm -rf build
	$(PY) -m pip download --quiet --disable-pip-version-check --only-binary=:all: \
		$(WHEELHOUSE_PIP_ARGS) -d $(WHEELHOUSE) -c requirements.lock -c constraints.txt \
		"$$(ls $(WHEELHOUSE)/xsilo-*.whl)$(WHEELHOUSE_EXTRAS)"
	cd $(WHEELHOUSE) && sha256sum *.whl > SHA256SUMS
	@echo "wheelhouse: $(WHEELHOUSE) ($$(ls $(WHEELHOUSE)/*.whl | wc -l) wheels); carry it over and"
	@echo "  python3 -m venv VENV && VENV/bin/pip install --no-index --find-links $(WHEELHOUSE) xsilo$(WHEELHOUSE_EXTRAS)"

clean:
	rm -rf $(VENV) build *.egg-info
