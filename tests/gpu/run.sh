#!/usr/bin/env bash
# The GPU check, in one call of under 8 minutes on one H100/H200: the GPU tests, then the per-worker step
# of the paper's architecture (bench-8b.yaml: HuBERT-large + Llama-3.1-8B, random weights, bf16) against
# a naive loop, as one JSON line. Needs torch, transformers, peft, pyarrow, pyyaml and tokenizers; not Ray,
# not DeepSpeed. pytest is used when present.
#   bash tests/gpu/run.sh [extra bench overrides, e.g. data.batch_seconds=120]
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())" || exit 1
if python -c "import pytest" 2>/dev/null; then
  timeout 240 python -m pytest -q -p no:cacheprovider tests/gpu -m gpu || echo "gpu tests: FAILED"
else
  echo "gpu tests: skipped (pytest is not installed here)"
fi
timeout 300 python -m sed_ray.cli bench step --config jobs/configs/bench-8b.yaml --baseline naive --steps 8 --warmup 3 "$@"
