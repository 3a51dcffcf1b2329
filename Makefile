# Every target creates .venv on first use (idempotent): `make test` on a fresh clone is enough.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv test demo bench clean

venv: $(STAMP)

# torch is installed first and pinned to the local CPU wheel when one is there; the project's own
# range (torch>=2.6,<2.14) then installs nothing more. DeepSpeed ships only an sdist whose setup.py
# imports torch, so it is built without build isolation against the torch already in the venv.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip setuptools wheel
	$(BIN)/python -m pip install "torch==$${SED_RAY_TORCH:-2.13.0}"
	$(BIN)/python -m pip install --no-build-isolation "deepspeed==0.19.8"
	$(BIN)/python -m pip install -e ".[dev]"
	# DeepSpeed compiles its CPU shared-memory collective op (C++, about a minute on 2 cores) the first time an
	# engine starts on CPU (cached in ~/.cache/torch_extensions); compiled here once, the first training run
	# does not stall on it. Where it cannot be compiled now, DeepSpeed tries again at that first engine.
	DS_ACCELERATOR=cpu $(BIN)/python -c "from deepspeed.comm.torch import build_shm_op; build_shm_op()" \
	  || echo "note: DeepSpeed's CPU communication op was not compiled now; the first CPU training compiles it"
	touch $(STAMP)

# The import contracts (pyproject.toml, [tool.importlinter]) first: a layering slip fails in seconds.
test: venv
	$(BIN)/lint-imports
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q --durations=15 $(PYTEST_ARGS)

demo: venv
	HF_HUB_OFFLINE=1 DS_ACCELERATOR=cpu $(BIN)/sed-ray demo $(DEMO_ARGS)

bench: venv
	$(BIN)/sed-ray bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
