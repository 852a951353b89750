# Spectral detector suite. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
RUN := $(PY) run.py
PYTEST_ARGS ?=

.DEFAULT_GOAL := help

help: ## Show this help
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}'

# the exact versions the README's figures were measured with (`make lock` re-pins them from pyproject.toml)
LOCK := requirements-lock.txt

$(VENV)/.installed: pyproject.toml $(LOCK)
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r $(LOCK)
	$(PY) -m pip install --quiet --no-deps -e '.[dev,search,cluster]'
	touch $@

venv: $(VENV)/.installed ## Create .venv and install the suite with the locked versions (requirements-lock.txt)

# pip freeze --all keeps setuptools (the wheel test builds without build isolation); pip itself is left out
LOCK_EXTRAS := dev,search,cluster
lock: ## Re-pin requirements-lock.txt: resolve pyproject.toml (with the dev, search and cluster extras) in a fresh venv
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install --quiet --upgrade pip
	.venv-lock/bin/python -m pip install --quiet -e '.[$(LOCK_EXTRAS)]'
	{ echo "# make lock: pip freeze of a fresh venv of pyproject.toml [$(LOCK_EXTRAS)] ($$(.venv-lock/bin/python --version))"; \
	  .venv-lock/bin/python -m pip freeze --all --exclude pip --exclude-editable; } > $(LOCK)
	rm -rf .venv-lock

demo-data: $(VENV)/.installed ## Build the embedded demo dataset under data/demo (deterministic)
	$(PY) -m experiments.data.demo --out data/demo

# the suite's four detectors, as conf/config.yaml lists them (`detectors:`)
MODELS ?= $(shell sed -n 's/^detectors: \[\(.*\)\]/\1/p' conf/config.yaml | tr -d ' ')

demo: demo-data ## Build the env and demo data, train the four detectors on it, print the comparison
	$(RUN) -m experiment=demo model=$(MODELS)
	$(RUN) task=report experiment=demo
	$(RUN) task=compare experiment=demo
	$(RUN) task=analyze experiment=demo
	@echo
	@echo "Next:"
	@echo "  make mlflow-ui                    compare these runs in the MLflow UI (http://127.0.0.1:5000)"
	@echo "  make ood-stress                   the four detectors under noise, JPEG, blur and down-scaling"
	@echo "  make laundering                   the four detectors under re-share, WebP, screenshot, crop, greyscale"
	@echo "  python run.py task=check_data data=genimage_tiny data.root=/path/to/your/data   check your own data"
	@echo "  python run.py -m data=genimage_tiny data.root=/path/to/your/data model=$(MODELS)   then train on it"

report: $(VENV)/.installed ## Compare the runs of an MLflow experiment (default: the demo)
	$(RUN) task=report experiment=demo

test: $(VENV)/.installed ## Run the fast test suite (CPU, minutes)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

test-full: $(VENV)/.installed ## Run every test, slow ones included
	$(PY) -m pytest $(PYTEST_ARGS)

# first train the demo detectors that have no finished run in the demo experiment (all four on a fresh clone)
define TRAIN_MISSING_DEMO
	@runs=$$($(RUN) task=runs experiment=demo task.limit=1000 2>/dev/null | grep FINISHED); \
	missing=$$(for m in $$(echo '$(MODELS)' | tr ',' ' '); do echo "$$runs" | grep -qw -- "$$m" || printf '%s,' "$$m"; done); \
	if [ -n "$$missing" ]; then $(RUN) -m experiment=demo model=$${missing%,}; fi
endef

ood-stress: demo-data ## OOD stress test (noise, JPEG, blur, down-scaling) of the demo detectors; prints the AUROC table
	$(TRAIN_MISSING_DEMO)
	$(RUN) task=ood_stress experiment=demo

laundering: demo-data ## Laundering chains (re-share, WebP, screenshot, crop, greyscale) of the demo detectors; prints the severity table
	$(TRAIN_MISSING_DEMO)
	$(RUN) task=ood_stress experiment=demo ood=laundering

# the detectors of the cross-generator protocols on the demo data, and their CPU-sized training, from random
# initialisation as the demo, every stage trained (no download; ++ because the scikit-learn and NPR detectors have
# no backbone)
PROTOCOL_MODELS ?= resnet34_localfft,radial_angular_logreg,npr
PROTOCOL_CPU := trainer=cpu trainer.max_epochs=6 callbacks.early_stopping.patience=3 ++model.backbone.pretrained=false \
	++model.backbone.freeze_stages=-1

train-on-one: demo-data ## GenImage's train-on-one on the demo data (train on each generator, test on all), then the matrices
	$(RUN) -m experiment=train_on_one model=$(PROTOCOL_MODELS) $(PROTOCOL_CPU)
	$(RUN) task=cross_generator experiment=train_on_one

leave-one-out: demo-data ## Leave-one-out on the demo data (train on all generators but one, test on it), then the table
	$(RUN) -m experiment=leave_one_out model=$(PROTOCOL_MODELS) $(PROTOCOL_CPU)
	$(RUN) task=cross_generator experiment=leave_one_out

chronological: demo-data ## Chronological protocol on the demo data (train on the first k generators, test on the later ones), then the table
	$(RUN) -m experiment=chronological model=$(PROTOCOL_MODELS) $(PROTOCOL_CPU)
	$(RUN) task=cross_generator experiment=chronological

TRIALS ?= 20
search: $(VENV)/.installed ## Optuna search (val/auc) for MODEL on the demo data, every trial an MLflow run
	$(RUN) experiment=demo hparams_search=optuna model=$(or $(MODEL),resnet34_localfft) hydra.sweeper.n_trials=$(TRIALS)

bench: $(VENV)/.installed ## Throughput of features, data loading and training -> reports/bench.{md,csv}
	$(PY) -m experiments.bench.throughput

bench-scale: $(VENV)/.installed ## Start-up at 10k/50k/200k generated images: walk, data check, an epoch, peak RSS -> reports/bench_scale.{md,csv}
	$(PY) -m experiments.bench.scale

bench-gpu: $(VENV)/.installed ## GPU: bare step vs Lightning fit (files, cache), memory, finiteness per precision -> reports/bench_gpu.{md,csv}
	$(PY) -m experiments.bench.gpu

# an offline GPU node: wheels of the locked packages its Python lacks, for `make gpu-check` there
# (NODE_PACKAGES: a file of the names it has, one per line or comma-separated, e.g. from `pip list`)
WHEELHOUSE ?= .whl
NODE_PYTHON ?= 3.12
NODE_PACKAGES ?=
wheelhouse: ## Wheels of the locked runtime packages for an offline node (NODE_PYTHON=, NODE_PACKAGES=) -> .whl/
	$(PYTHON) experiments/bench/wheelhouse.py --lock $(LOCK) --python-version $(NODE_PYTHON) \
		--out $(WHEELHOUSE) $(if $(NODE_PACKAGES),--have $(NODE_PACKAGES))

GPU_OUT ?= reports/gpu_check
gpu-check: ## On a CUDA machine with torch: GPU tests, bench-gpu, one-epoch demo runs on the GPU -> $(GPU_OUT)
	WHEELHOUSE=$(WHEELHOUSE) bash experiments/bench/gpu_check.sh $(GPU_OUT)

# The tracking server's address and stores; for a cluster (docs/scaling.md):
#   make mlflow-server HOST=0.0.0.0 BACKEND=postgresql+psycopg2://mlflow@db-host/mlflow ARTIFACTS=/shared/mlartifacts WORKERS=4
# (not ?=: a HOST or PORT of the shell's environment is not taken for the server's)
HOST = 127.0.0.1
PORT = 5000
BACKEND = sqlite:///mlruns.db
ARTIFACTS = mlartifacts
WORKERS = 1
mlflow-server: $(VENV)/.installed ## Tracking server (http://127.0.0.1:5000 on the project's store; HOST= BACKEND= ARTIFACTS= for a cluster), artifacts proxied
	$(VENV)/bin/mlflow server --backend-store-uri '$(BACKEND)' --artifacts-destination '$(ARTIFACTS)' --serve-artifacts --host $(HOST) --port $(PORT) --workers $(WORKERS)

PLAYWRIGHT_DIR ?= $(or $(TMPDIR),/tmp)/mlflow-ui-shot
ui-screenshot: $(VENV)/.installed ## Screenshot the MLflow UI after make demo -> docs/mlflow_{compare,datasets,sweep}.png
	@command -v chromium >/dev/null || { echo "needs chromium: apt-get install -y chromium"; exit 1; }
	test -d $(PLAYWRIGHT_DIR)/node_modules/playwright-core || npm install --prefix $(PLAYWRIGHT_DIR) playwright-core
	PLAYWRIGHT_NODE_MODULES=$(PLAYWRIGHT_DIR)/node_modules $(PY) -m tests.test_ui_screenshot --out docs/mlflow_compare.png --pages docs

PORT ?= 5000
WORKERS ?= 1
mlflow-ui: $(VENV)/.installed ## Open the MLflow UI on the project's store (http://127.0.0.1:$(PORT); PORT=, WORKERS= default 1)
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlruns.db --host 127.0.0.1 --port $(PORT) --workers $(WORKERS)

clean: ## Remove run outputs (logs/, reports/), keep data and the MLflow store
	rm -rf logs reports

.PHONY: help venv lock demo-data demo report search ood-stress laundering train-on-one leave-one-out chronological bench bench-scale bench-gpu wheelhouse gpu-check mlflow-server ui-screenshot test test-full mlflow-ui clean
