# make demo: bake a project into build/ and train both engines on the bundled digits data.
# make test: run the template's test suite (it bakes projects and runs their own tests).
# Both create or update .venv first: nothing else needs installing by hand.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test venv clean

venv: $(VENV)/.installed

# Re-installed whenever requirements-dev.txt changes.
$(VENV)/.installed: requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

demo: venv
	$(PY) scripts/demo.py

# Two workers: the default bake's full suite (the longest test, about 10 minutes) on one while the other takes the
# rest; an idle worker takes queued tests from the busy one (worksteal).
test: venv
	$(PY) -m pytest -n 2 --dist worksteal

clean:
	rm -rf build .pytest_cache
