# The README's two commands, each self-sufficient and idempotent:
#   make demo   sets everything up, then protects, steals, verifies and prints a verdict table
#   make test   sets everything up, then runs the test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
# Faster CPU training (../shared/CPU-NOTES.md): no page faults from glibc returning memory every step.
export MALLOC_MMAP_THRESHOLD_ := 4294967296
export MALLOC_TRIM_THRESHOLD_ := 4294967296

.PHONY: setup data chromium test demo lock clean

setup: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# The lock pins torch==2.13.0, the local CPU build; anything unpinned pulls CUDA wheels.
	$(PY) -m pip install --quiet -r requirements.lock
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

# Fashion-MNIST installs offline from Debian. Other ways to supply it: see README "Data".
data:
	@if [ -f $(FMNIST) ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "Installing Fashion-MNIST from Debian (dataset-fashion-mnist)..."; \
	  (apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
	   (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null)) || \
	  echo "warning: could not install dataset-fashion-mnist; the tests do not need it, the demo does (see README 'Data')."; \
	else \
	  echo "Fashion-MNIST not found at $(FMNIST) and apt-get is not usable as root;"; \
	  echo "the test suite still runs (it makes its own data); for the demo set MODELPROVE_DATA or see README 'Data'."; \
	fi

# Headless Chromium checks that a report renders (tests/test_report.py); the test is skipped, saying why,
# when it is missing. Installed from Debian like the data; the build never fails for it.
chromium:
	@if command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "Installing Chromium from Debian (chromium), to check that reports render..."; \
	  (apt-get install -y -qq chromium >/dev/null 2>&1 || \
	   (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)) || \
	  echo "warning: could not install chromium; the test that renders a report in a browser will be skipped."; \
	else \
	  echo "Chromium not found and apt-get is not usable as root; the test that renders a report in a browser"; \
	  echo "will be skipped (install Debian's chromium package to run it)."; \
	fi

test: setup data chromium
	$(PY) -m pytest -q -n auto --maxprocesses=2 --dist loadfile

demo: setup data
	$(PY) scripts/demo.py

lock: setup
	{ echo "# Exact versions \`make\` installs into .venv, resolved on the project's 2-core CPU machine."; \
	  echo "# Regenerate: make lock"; \
	  $(PY) -m pip freeze --exclude-editable | sed 's/^torch==\(.*\)+cpu/torch==\1/'; } > requirements.lock.tmp
	mv requirements.lock.tmp requirements.lock

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache
