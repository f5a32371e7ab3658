#!/usr/bin/env bash
# The GPU check of productvlm at full size, in one script: installs what it needs into .venv,
# then prints, each beside its target, peak GPU memory, samples/s and MFU of LoRA steps at
# num_crops 4 and 16 (bf16, gradient checkpointing, SDPA, and flash-attention-2 if it
# installs), a QLoRA step, batch 8 vs a batch-1 loop, batched generation tokens/s, and the
# demo's wall time (bench/gpu_check.py holds the measurements; bench/flops.py the FLOP count).
#
# Usage:
#   bash bench/gpu_check.sh                 # on a CUDA machine: install, then measure (~8 min)
#   bash bench/gpu_check.sh --dry-run       # anywhere: tiny config on the CPU, no installs
#   WHEELS=/path/to/wheels bash bench/gpu_check.sh   # offline: pip installs from that folder
#   HUB=/path/to/hub-files bash bench/gpu_check.sh   # the Hub's config.json + tokenizer files
#
# On a machine without a package registry whose python3 has a CUDA torch (the lent H200):
# run `.venv/bin/python bench/gpu_wheels.py` first where PyPI answers. It fills .whl/ with the
# locked wheels that image lacks (~32 MiB) and .hub/ with the Hub's config and tokenizer
# files; carry both. This script then installs .whl/ into /tmp/site and runs on python3.
#
# Nothing is downloaded from the Hub: weights are random; the Hub's config.json and tokenizer
# files come from ../shared/phi3v-conformance/hub or $HUB. A CUDA torch already installed on
# the machine is reused (.venv is then made with --system-site-packages and torch held at its
# version); otherwise the CUDA build of torch comes from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
START=$(date +%s)
DRY=0
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY=1 ;;
    *) echo "usage: bash bench/gpu_check.sh [--dry-run]" >&2; exit 2 ;;
  esac
done
HUB=${HUB:-../shared/phi3v-conformance/hub}
[ -f "$HUB/config.json" ] || HUB=.hub
PY=.venv/bin/python

if [ "$DRY" = 0 ] && compgen -G ".whl/*.whl" >/dev/null && [ ! -x "$PY" ]; then
  echo "installing $(ls .whl/*.whl | wc -l) carried wheels into /tmp/site (no registry used)"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  ELAPSED=$(( $(date +%s) - START ))
  echo "installed in ${ELAPSED} s"
  python3 bench/gpu_check.py --hub "$HUB" --budget-s $(( 470 - ELAPSED ))
  echo "gpu_check.sh: $(( $(date +%s) - START )) s in all (target: under 8 minutes)"
  exit 0
fi

if [ "$DRY" = 1 ]; then
  [ -x "$PY" ] || { echo "--dry-run needs .venv (make venv)" >&2; exit 2; }
  exec "$PY" bench/gpu_check.py --dry-run --budget-s 900
fi

command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version \
  --format=csv,noheader || { echo "no nvidia-smi: not a CUDA machine (try --dry-run)" >&2; exit 2; }

PIP_ARGS=(-q --disable-pip-version-check)
[ -n "${WHEELS:-}" ] && PIP_ARGS+=(--no-index --find-links "$WHEELS")
CONSTRAINTS=$(mktemp)
SYSTEM_TORCH=$(python3 -c 'import torch; assert torch.cuda.is_available(); print(torch.__version__)' 2>/dev/null || true)
if [ ! -x "$PY" ]; then
  if [ -n "$SYSTEM_TORCH" ]; then
    python3 -m venv --system-site-packages .venv
  else
    python3 -m venv .venv
  fi
fi
VENV_TORCH=$("$PY" -c 'import torch; assert torch.cuda.is_available(); print(torch.__version__)' 2>/dev/null || true)
if [ -n "$VENV_TORCH" ]; then
  echo "torch==$VENV_TORCH" > "$CONSTRAINTS"          # keep the CUDA torch that works
else
  CPU_TORCH=$("$PY" -c 'import torch; print(torch.__version__.split("+")[0])' 2>/dev/null || true)
  echo "installing the CUDA build of torch${CPU_TORCH:+ $CPU_TORCH} into .venv"
  "$PY" -m pip install "${PIP_ARGS[@]}" --force-reinstall "torch${CPU_TORCH:+==$CPU_TORCH}"
  echo "torch==$("$PY" -c 'import torch; print(torch.__version__)')" > "$CONSTRAINTS"
fi
"$PY" -m pip install "${PIP_ARGS[@]}" -c "$CONSTRAINTS" -e '.[gpu]'
if ! "$PY" -c 'import flash_attn' 2>/dev/null; then
  # a prebuilt wheel installs in seconds; building from source takes far longer: give up then
  timeout 150 "$PY" -m pip install "${PIP_ARGS[@]}" -c "$CONSTRAINTS" --no-build-isolation \
    flash-attn || echo "flash-attn: did not install within 150 s; SDPA only"
fi
ELAPSED=$(( $(date +%s) - START ))
echo "installed in ${ELAPSED} s"
"$PY" bench/gpu_check.py --hub "$HUB" --budget-s $(( 470 - ELAPSED ))
echo "gpu_check.sh: $(( $(date +%s) - START )) s in all (target: under 8 minutes)"
