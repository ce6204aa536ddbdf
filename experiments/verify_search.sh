#!/usr/bin/env bash
# Verifies the proxy against dedicated models on the shipped base model: the 2x2
# (exhaustive) and 4x4 (greedy + 200 random orders) searches with --verify. Dedicated models
# train on the BSDS500 train+test latents and are measured on the embedded photographs.
#   bash experiments/verify_search.sh proxy    # fine-tuned from the proxy, 1,000 steps (~25 + ~70 min)
#   bash experiments/verify_search.sh scratch  # from random weights, 1,500 steps (~35 + ~75 min)
# 4x4 models fine-tuned for 1,000 steps specialise to BSDS500 and lose rate on the photographs
# (retired fine-tuning probe, results/retired.md): verify 4x4 held out on BSDS500 val (below).
# on 2 CPU cores (--jobs 2). Runs of one protocol share one folder of dedicated models, so
# the 2x2 run's baselines are reused by the 4x4 run where the proxy allows (from scratch).
# Resumable: re-run after an interruption.
#   [PATCHES="2 4"] bash experiments/verify_search.sh PROTOCOL [TRAIN_LATENTS] [JOBS]
# Held out on BSDS500 val instead of the embedded photographs (same domain as the training
# latents, 100 images; the run folders get the suffix -bsdsval):
#   python -m orderopt.latents --images ../shared/datasets/bsds500/val --out checkpoints/context/val_latents.pt
#   HELD_OUT=checkpoints/context/val_latents.pt STEPS_OVERRIDE=500 RANDOM_ORDERS=20 PATCHES=4 bash experiments/verify_search.sh proxy
set -euo pipefail
cd "$(dirname "$0")/.."
PROTOCOL=${1:-proxy}
TRAIN=${2:-checkpoints/context/train_latents.pt}  # written by experiments/train_shipped_context.sh
JOBS=${3:-2}
case "$PROTOCOL" in
  scratch) STEPS=1500; SUFFIX="-scratch" ;;  # verified from scratch
  proxy) STEPS=1000; SUFFIX="-from-proxy" ;;
  *) echo "protocol must be scratch or proxy" >&2; exit 2 ;;
esac
STEPS=${STEPS_OVERRIDE:-$STEPS}
RANDOM_ORDERS=${RANDOM_ORDERS:-200}
[ -n "${HELD_OUT:-}" ] && SUFFIX="$SUFFIX-bsdsval"
COMMON=(--train-latents "$TRAIN" --verify-steps "$STEPS" --verify-init "$PROTOCOL" --seed 0 --jobs "$JOBS"
  --verify-early-stop 0 --dedicated-dir "checkpoints/dedicated$SUFFIX")
[ -n "${HELD_OUT:-}" ] && COMMON+=(--latents "$HELD_OUT")
PATCHES=${PATCHES:-2 4}  # PATCHES=2 for the 2x2 run alone
for K in $PATCHES; do
  if [ "$K" = 2 ]; then
    python -m orderopt.search --patch 2 --out "results/search-patch2$SUFFIX" --verify 4 "${COMMON[@]}"
  else
    python -m orderopt.search --patch 4 --strategy greedy --random "$RANDOM_ORDERS" --out "results/search-patch4$SUFFIX" \
      --verify 1 "${COMMON[@]}"
  fi
done
