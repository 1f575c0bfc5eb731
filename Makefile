# smtp-border: the two commands a newcomer needs, both run as root on Debian 12.
#   make demo   set everything up, then play the policy on the Mininet campus
#   make test   set everything up, then run every test (unit and Mininet)
VENV ?= .venv
PYTHON := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup demo test unit clean

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

# Last resort after an interrupted run: what `mn -c` does, plus our controllers.
clean:
	-pkill -f 'ryu-manager.*ryu_apps.smtp_policy'
	-mn -c
