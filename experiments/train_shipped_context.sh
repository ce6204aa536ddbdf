#!/usr/bin/env bash
# Trains the context models shipped in orderopt/weights/ for the shipped base model:
# the any-order proxies for 2x2 and 4x4 patches (a quarter of each batch with the
# autoregressive context, so that they rate autoregressive on the same weights) and the
# dedicated autoregressive baseline, all with the same latents, crops, batch, steps and seed,
# then exports them as fp16 and copies their held-out records to results/context_*.json.
# Training latents: BSDS500 train + test; held-out: the embedded photographs. Resumable.
#   bash experiments/train_shipped_context.sh [BSDS500_DIR] [STEPS]
set -euo pipefail
cd "$(dirname "$0")/.."
BSDS=${1:-../shared/datasets/bsds500}
STEPS=${2:-3000}
OUT=checkpoints/context
mkdir -p "$OUT"
[ -f "$OUT/train_latents.pt" ] || python -m orderopt.latents --images "$BSDS/train" "$BSDS/test" --out "$OUT/train_latents.pt"
COMMON=(--train-latents "$OUT/train_latents.pt" --steps "$STEPS" --batch 16 --crop 16 --seed 0)
python -m orderopt.train context --proxy --patch 2 --raster-fraction 0.25 "${COMMON[@]}" --threads 1 --out "$OUT/proxy_k2.pt" &
python -m orderopt.train context --proxy --patch 4 --raster-fraction 0.25 "${COMMON[@]}" --threads 1 --out "$OUT/proxy_k4.pt" &
wait
python -m orderopt.train context --kind autoregressive "${COMMON[@]}" --out "$OUT/autoregressive.pt"
for name in proxy_k2 proxy_k4 autoregressive; do
  python -m orderopt.train export --ckpt "$OUT/$name.pt" --out "orderopt/weights/$name.pt"
  cp "$OUT/$name.json" "results/context_$name.json"
done
