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
