# Two entry points for a fresh machine (Python 3.11): `make pipeline` and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: pipeline venv test lock study mutation plots-template

# Create the virtualenv from the pinned lock file (only when the lock changed), then run the pipeline.
pipeline: $(STAMP)
	DVC_NO_ANALYTICS=1 $(BIN)/dvc repro

# The virtualenv alone, e.g. in a second clone before `dvc pull`.
venv: $(STAMP)

$(STAMP): requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.lock
	touch $(STAMP)

# The whole test suite (unit, integration and the end-to-end DVC/MLflow/torchrun tests) plus lint.
test: $(STAMP)
	$(BIN)/ruff check gain stages tests benchmarks
	$(BIN)/ruff format --check gain stages tests benchmarks
	DVC_NO_ANALYTICS=1 $(BIN)/pytest -q -n 2 --dist loadfile

# The method study (Grad-CAM / GAIN / GAIN_ext over 3 seeds, SEC's loss ablation, diagnostics): reports/study/.
# Two run processes with one torch thread each; finished runs under checkpoints/study/ are reused.
study: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m gain.study --diagnose

# Mutation testing of the modules that hold the method ([tool.mutmut] in pyproject.toml; mutmut is pinned in
# requirements.lock). Not part of `make test`: about 17 min on 2 idle cores. Report: reports/mutation.md.
mutation: $(STAMP)
	rm -rf mutants
	OMP_NUM_THREADS=1 $(BIN)/mutmut run --max-children 2
	$(BIN)/python -m tests.mutation_report > reports/mutation.md.tmp
	mv reports/mutation.md.tmp reports/mutation.md

# .dvc/plots.html (committed): the `dvc plots` page template with Vega, Vega-Lite and vega-embed inlined, rebuilt
# from the npm registry at the versions and integrities pinned in gain/evaluation/plots_template.py (needs npm).
plots-template: $(STAMP)
	$(BIN)/python -m gain.evaluation.plots_template

lock:
	$(BIN)/pip freeze --exclude-editable | sed '1i # Pinned environment (pip freeze of a working install). Regenerate with: make lock' > requirements.lock
