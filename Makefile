# smtp-border: the two commands a newcomer needs, both run as root on Debian 12.
#   make demo   set everything up, then play the policy on the Mininet campus
#   make test   set everything up, then run every test (unit and Mininet)
VENV ?= .venv
PYTHON := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup demo test unit wheel clean

setup:
	VENV=$(VENV) bash scripts/setup.sh

demo: setup
	$(PYTHON) mininet/demo.py

test:
	TESTS=1 VENV=$(VENV) bash scripts/setup.sh
	$(PYTHON) -m pytest -v -rs $(PYTEST_ARGS) tests

# Fast tests only (no network, no controller process): the core, delivery against a fake switch.
unit: setup
	$(PYTHON) -m pytest -q tests/unit

# The one thing a production server installs (docs/deploy.md): dist/smtp_border-VERSION-py3-none-any.whl,
# carrying the unit, its environment file, logrotate's rule, the monitoring files and an example policy.
wheel:
	python3 -m pip wheel --no-deps -q -w dist .

# Last resort after an interrupted run: the controllers the tests started (by
# their pid files; never another), then what `mn -c` does.
clean:
	bash scripts/clean.sh
