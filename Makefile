# The two commands a newcomer needs: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast install browser clean bench

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# CPU torch first: with torch already present, the package's torch range installs nothing more.
# The ray extra too: the tests run `--executor ray` on a real local Ray cluster.
$(STAMP): $(PY) pyproject.toml
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test,ray,postgres]"
	touch $(STAMP)

install: $(STAMP)

# The browser test of `facenet serve` drives Debian's chromium (nothing can download a browser
# here); installed with apt-get where we are root, else that one test says why it skipped.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 || \
	     (apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1)) \
	    && echo "installed chromium for the browser test" || echo "could not install chromium; the browser test will skip"; \
	  else echo "chromium missing and not root; the browser test will skip"; fi; }

demo: $(STAMP)
	$(VENV)/bin/facenet demo

test: $(STAMP) browser
	$(PY) -m pytest -q -rs tests

# For contributors: everything but the tests marked slow (training runs, benchmarks, killed
# processes, the browser), about 2 minutes on 2 cores; `make test` (and CI) still runs them all.
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" tests

bench: $(STAMP)
	$(PY) benchmarks/align_speed.py

clean:
	rm -rf $(VENV) demo-out
