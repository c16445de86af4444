#!/usr/bin/env bash
# Every accelerator benchmark of the project, in one call on one GPU (or a TPU VM), then the
# PyTorch anchor on the same card and a summary of ratios. At most about 8 minutes on an H100.
#
#   bash benchmarks/accelerator.sh > results.jsonl          # JSON lines, then a summary table
#   ANCHOR=../shared/bench/anchor_torch.py bash benchmarks/accelerator.sh    # the anchor's path
#   TINY=1 bash benchmarks/accelerator.sh    # a CPU smoke run of the plumbing (batch 8, 1 step)
#   ANCHOR_FULL=1 ...    # the anchor's full set (6 min: eager, compiled, batch 512, DiT-S/B)
#
# Each benchmark prints one JSON line (a failed one, e.g. out of memory, prints {"error": ...}
# and the script goes on). Absolute figures drift between machines: compare ratios on one card.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
ANCHOR="${ANCHOR:-../shared/bench/anchor_torch.py}"
OUT_FILE="${OUT_FILE:-$(mktemp -t accelerator.XXXXXX.jsonl)}"
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}"
CIFAR=(--image_shape=32,32,3 --num_classes=10)
LATENT=(--image_shape=32,32,4 --num_classes=1000)
BATCHES=(128 512); DIT_BATCH=256; STEPS=30; SAMPLES=512; ANCHOR_ARGS=(--only 1)
DALLE=(--config=experiments/dalle_coco.py --batch_size=32)
if [[ -n "${TINY:-}" ]]; then
  BATCHES=(8); DIT_BATCH=8; STEPS=1; SAMPLES=8; ANCHOR_ARGS=(--tiny)
  DALLE=(--config=experiments/dalle_digits.py:runlocal --image_shape=32,64,1 --image_vocab=128 --batch_size=8)
fi
if [[ -n "${ANCHOR_FULL:-}" ]]; then ANCHOR_ARGS=(); fi

run() {  # name, then the command; one JSON line tagged with the name, or an error line
  local name="$1"; shift
  local line
  if line="$(timeout 300 "$@" 2>/dev/null | tail -n 1)" && [[ "$line" == \{* ]]; then
    echo "{\"bench\": \"$name\", ${line:1}"
  else
    echo "{\"bench\": \"$name\", \"error\": \"failed or timed out (out of memory?)\"}"
  fi | tee -a "$OUT_FILE"
}

# DDPM CIFAR-10 UNet (35.7M), bf16 compute with fp32 params: the paper's batch, then a larger one.
for bs in "${BATCHES[@]}"; do
  run "ddpm_unet_bf16_b$bs" "$PY" benchmarks/train_step.py --config=experiments/ddpm_cifar10.py:bf16 \
    "${CIFAR[@]}" --config.batch_size="$bs" --steps="$STEPS"
done
run ddim50_sampling "$PY" benchmarks/sample.py --config=experiments/ddpm_cifar10.py:bf16 \
  "${CIFAR[@]}" --num="$SAMPLES" --config.sample.steps=50 --repeats=1
# DiT-S/2 and B/2 on 32x32x4 inputs (the shape of 256px latents), bf16.
DIT=(--config=experiments/dit_mnist.py:conditional,bf16 "${LATENT[@]}" --config.batch_size="$DIT_BATCH")
run "dit_s2_b$DIT_BATCH" "$PY" benchmarks/train_step.py "${DIT[@]}" --steps="$STEPS"
run "dit_b2_b$DIT_BATCH" "$PY" benchmarks/train_step.py "${DIT[@]}" --steps="$STEPS" \
  --config.model.hidden_size=768 --config.model.num_heads=12
# The DALL-E transformer (stage 2) and the FID network's feature extraction.
run dalle_transformer "$PY" -m benchmarks.dalle "${DALLE[@]}" --steps="$STEPS"
run inception_features "$PY" benchmarks/features.py --num="$SAMPLES" --image_shape=32,32,3 \
  --dtype=bfloat16 --repeats=1

if "$PY" -c "import torch, diffusers" 2>/dev/null && [[ -f "$ANCHOR" ]]; then
  timeout 420 "$PY" "$ANCHOR" "${ANCHOR_ARGS[@]}" --out "$(dirname "$OUT_FILE")" 2>/dev/null | while read -r line; do
    [[ "$line" == \{* ]] && echo "{\"bench\": \"torch_anchor\", ${line:1}" | tee -a "$OUT_FILE"
  done
else
  echo '{"bench": "torch_anchor", "error": "needs torch + diffusers and ANCHOR=<anchor_torch.py>"}' \
    | tee -a "$OUT_FILE"
fi

"$PY" - "$OUT_FILE" <<'PYEOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
ours = {r["bench"]: r for r in rows if r["bench"] != "torch_anchor" and "error" not in r}
anchor = [r for r in rows if r["bench"] == "torch_anchor" and "error" not in r]
print("\nbench                     img/s      TFLOP/s   MFU     vs torch")
for name, r in ours.items():
  ips = r.get("images_per_s") or r.get("tokens_per_s") or r.get("images_per_s_per_device")
  ratio = ""
  for a in anchor:  # same model and batch on the same card
    same_model = ("unet" in name and "UNet" in str(a.get("name", ""))) or (
      "dit_s2" in name and "S/2" in str(a.get("name", ""))) or (
      "dit_b2" in name and "B/2" in str(a.get("name", "")))
    if same_model and a.get("batch") == r.get("batch_size") and ips and a.get("img_per_s"):
      ratio = f"{ips / a['img_per_s']:.2f}x"
  util = r.get("utilisation")
  print(f"{name:24s} {ips if ips is not None else '-':>9} {r.get('tflops_per_s') or '-':>9} "
        f"{f'{100 * util:.1f}%' if util else '-':>7} {ratio:>8}")
PYEOF
echo "(JSON lines kept in $OUT_FILE)" >&2
