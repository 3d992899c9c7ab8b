# Two commands for a fresh Linux machine with Python 3.10+:
#   make demo   train the CPU preset on the embedded synthetic data, reconstruct held-out objects
#   make test   run the test suite
# Both create ./.venv and install what they need on first use.

PY ?= python3
VENV ?= .venv
PYTHON := $(VENV)/bin/python
DEMO_STEPS ?= 440

.PHONY: demo test venv venv-dev bench

venv: $(VENV)/.installed
venv-dev: $(VENV)/.installed-dev

$(VENV)/.installed: requirements.txt
	$(PY) -m venv $(VENV)
	$(PYTHON) -m pip install -r requirements.txt
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.txt
	$(PYTHON) -m pip install -r requirements-dev.txt
	touch $@

# bpy pins numpy<2, so Blender gets its own environment (used by scripts/render_blender.py tests);
# when bpy cannot be installed (it has wheels for CPython 3.11 only) those tests skip.
.venv-blender/.installed: requirements-blender.txt
	($(PY) -m venv .venv-blender && .venv-blender/bin/python -m pip install -r requirements-blender.txt && touch $@) \
	  || echo "NOTE: bpy could not be installed; the Blender tests will be skipped"

demo: venv
	$(PYTHON) main.py cpu --max_steps $(DEMO_STEPS) --workspace workspace_demo --export_objects 2 --overwrite

test: venv-dev .venv-blender/.installed
	$(PYTHON) -m pytest tests -q

bench: venv
	$(PYTHON) scripts/bench_unet.py
	$(PYTHON) scripts/bench_render.py
	$(PYTHON) scripts/bench_train.py
