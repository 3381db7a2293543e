#!/usr/bin/env bash
# One command for a CUDA machine: run the GPU paths that have never run (the DiT and the SDE
# sampler in bf16, LoRA training steps, the VAE decode, NCCL and Ulysses with >= 2 GPUs) on a
# reduced-depth Qwen-Image at real width, and write per-step seconds and peak memory to
# benchmarks/results/gpu_check.json. Under 8 minutes on one H100.
#
#   scripts/gpu_check.sh                     # defaults: 3 blocks, 512 and 1024 px
#   scripts/gpu_check.sh --blocks 4 --skip vae
#   SPOTLIGHT_PYTHON=/path/to/python scripts/gpu_check.sh
#
# Exit codes (scripts/gpu_check.py): 0 every check passed, or no CUDA device (a message says
# so, nothing is written; --require-cuda makes that 2); 1 a check failed (see the JSON);
# 2 bad arguments. All options: scripts/gpu_check.sh --help
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${SPOTLIGHT_PYTHON:-}"
if [[ -z "$python" ]]; then
    if [[ -x "$repo/.venv/bin/python" ]]; then python="$repo/.venv/bin/python"; else python="python3"; fi
fi
cd "$repo"
exec timeout --signal=TERM --kill-after=30 600 "$python" scripts/gpu_check.py "$@"
