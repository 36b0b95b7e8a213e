# Two commands for a newcomer: `make figures` and `make test`. The venv is made on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cksum < pyproject.toml | cut -d' ' -f1)

KERNEL := simo-study
# jupyter refuses to run as root unless told (containers, CI machines)
ROOT_OK := $(if $(filter 0,$(shell id -u)),--allow-root,)

.PHONY: setup figures foundation regimes figures-smoke test bench lab site site-check clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -qq --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -qq --disable-pip-version-check -e ".[dev]"
	$(BIN)/python -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "Python ($(KERNEL))" > /dev/null
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

lab: $(STAMP)              ## register the notebooks' kernel (simo-study) for this user and open JupyterLab on notebooks/
	$(BIN)/python -m ipykernel install --user --name $(KERNEL) --display-name "Python ($(KERNEL))"
	$(BIN)/jupyter lab $(ROOT_OK) --notebook-dir=notebooks $(LAB_ARGS)

site: $(STAMP)             ## render the executed notebooks (executed/) as a static site in build/site/
	$(BIN)/python -m simo site

site-check: $(STAMP)       ## build the site, open every page in headless Chromium, screenshot each
	$(BIN)/python -m simo site --check

clean:                     ## remove caches and executed notebooks (keeps .venv and figures/)
	rm -rf .cache build
