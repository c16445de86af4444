#!/usr/bin/env bash
# The DDPM CIFAR-10 speed check of the diffusion issue, as one script for a GPU machine:
# our training step (bf16 compute, fp32 params) at batch 128 and at larger batches, DDIM-50
# sampling throughput, and the PyTorch + diffusers anchor on the same card in the same call.
#
#   ANCHOR=path/to/anchor_torch.py bash benchmarks/gpu_ddpm.sh > results.jsonl
#
# Each line of output is one JSON result; compare images/s as ratios on the same card.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}"
COMMON=(--image_shape=32,32,3 --num_classes=10)
for bs in 128 256 512 1024; do
  "$PY" benchmarks/train_step.py --config=experiments/ddpm_cifar10.py:bf16 "${COMMON[@]}" \
    --config.batch_size="$bs" --steps=30 || echo "{\"batch_size\": $bs, \"error\": \"failed (OOM?)\"}"
done
"$PY" benchmarks/train_step.py --config=experiments/ddpm_cifar10.py "${COMMON[@]}" --steps=20
"$PY" benchmarks/sample.py --config=experiments/ddpm_cifar10.py:bf16 "${COMMON[@]}" \
  --num=512 --config.sample.steps=50
if [[ -n "${ANCHOR:-}" ]]; then
  "$PY" "$ANCHOR" --only 1
fi
