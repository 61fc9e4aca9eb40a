# The one entry point for set-up, the main job, tests and checks.
# `make demo` and `make test` each work on a fresh machine: they create .venv,
# install the project (and, as root, the Debian packages the tests need) and run.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
OUT ?= out/morning

.PHONY: demo test check bench clean venv

$(STAMP): pyproject.toml scripts/bootstrap.sh
	bash scripts/bootstrap.sh $(VENV)
	touch $(STAMP)

venv: $(STAMP)

## Main job: closed-loop Schlosskreuzung morning peak, the adaptive controller against the
## baselines, report written.
demo: $(STAMP)
	$(VENV)/bin/atsc run morning_peak --controller fixed --controller actuated \
		--controller max-pressure --controller adaptive --seeds 2 --out $(OUT)

## Whole test suite (what CI runs).
test: $(STAMP)
	bash scripts/test.sh $(VENV)

check: $(STAMP)
	$(VENV)/bin/ruff check controller sim tests bench
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) out
