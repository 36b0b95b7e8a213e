# Two commands for a newcomer: `make figures` and `make test`. The venv is made on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cksum < pyproject.toml | cut -d' ' -f1)

.PHONY: setup figures foundation regimes figures-smoke test bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -qq --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -qq --disable-pip-version-check -e ".[dev]"
	@rm -f $(VENV)/.installed-* && touch $@

setup: $(STAMP)            ## create .venv and install (skips what is already installed)

figures: $(STAMP)          ## regenerate every figure on the embedded default (tiny profile)
	$(BIN)/python -m simo figures --profile tiny

foundation: $(STAMP)       ## rebuild the released foundation encoder weights/foundation-tiny.* (~40 min on 2 cores; resumes)
	$(BIN)/python -m simo foundation --profile tiny

regimes: $(STAMP)          ## the regime study (notebook 06, profile regime): about an hour cold on 2 cores
	$(BIN)/python -m simo figures --profile regime --only 06

figures-smoke: $(STAMP)    ## run every notebook at CI scale (figures go to build/)
	$(BIN)/python -m simo figures --profile smoke

test: $(STAMP)             ## unit tests + every notebook executed on the smoke profile
	$(BIN)/python -m pytest

bench: $(STAMP)            ## speed/memory benchmarks (ratios against a baseline in the same run)
	$(BIN)/python benchmarks/merge_speed.py
	$(BIN)/python benchmarks/step_time.py

clean:                     ## remove caches and executed notebooks (keeps .venv and figures/)
	rm -rf .cache build
