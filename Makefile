# Two commands for a newcomer (see README):  `make book`  and  `make test`.
# Each builds the local virtual environment .venv from requirements.lock first (once).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.atoms-installed
PROFILE ?= default
# Offline by construction: no hub, no telemetry, no wandb (see atomslib/models.py for the hub path).
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export HF_HUB_DISABLE_TELEMETRY = 1
export HF_UPDATE_DOWNLOAD_COUNTS = 0
export WANDB_MODE = disabled
export PYTHONUNBUFFERED = 1

.PHONY: install book test bench site-check clean-book demo
install: $(STAMP)

$(STAMP): requirements.lock requirements-ray.lock pyproject.toml scripts/install-venv.sh
	scripts/install-venv.sh "$(PYTHON)" $(VENV)
	touch $(STAMP)

# The main job: run every notebook on the profile (default: SmolLM2-135M, CPU, offline), then build the site.
book: $(STAMP)
	$(BIN)/atoms run --all --profile $(PROFILE)
	@mkdir -p _build
	$(BIN)/jupyter-book build . --path-output _build/book-$(PROFILE) > _build/book-$(PROFILE).log 2>&1 \
	  || { tail -n 40 _build/book-$(PROFILE).log; exit 1; }
	@grep -E "build succeeded|WARNING" _build/book-$(PROFILE).log | tail -n 10
	@echo ">> the book is at _build/book-$(PROFILE)/_build/html/index.html"

test: $(STAMP)
	scripts/ensure-chromium.sh
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

bench: $(STAMP)
	for b in bench/*.py; do $(BIN)/python $$b || exit 1; done

demo: $(STAMP)
	$(BIN)/atoms demo

# Serve the built site on 127.0.0.1, check math/figures/links in headless Chromium, screenshot every page.
site-check: $(STAMP)
	scripts/ensure-chromium.sh
	$(BIN)/python scripts/check_site.py _build/book-$(PROFILE)/_build/html --screenshots _build/shots-$(PROFILE)

clean-book:
	rm -rf _build book/generated
