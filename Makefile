# Two commands for a newcomer: `make demo` and `make test`. Both bootstrap .venv.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.xsilo-installed
PYTEST_ARGS ?=

export FLWR_TELEMETRY_ENABLED := 0
export FLWR_DISABLE_UPDATE_CHECK := 1

.PHONY: demo test venv lock clean

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

# Re-pin requirements.lock from the current venv (run after changing dependencies).
lock: $(STAMP)
	$(PY) -m pip freeze --exclude-editable | grep -v '^xsilo' > requirements.lock

clean:
	rm -rf $(VENV) build *.egg-info
