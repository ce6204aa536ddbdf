#!/usr/bin/env bash
# Trains the base codec at three qualities and their context models on one lent GPU, within a
# fixed wall-time budget, and packs the fp16 weights and training records into $OUT.
#
#   1. base: q1, q2, q3 (lambda 0.0018, 0.0067, 0.0250: CompressAI's qualities 1, 3 and 5), all
#      fine-tuned in parallel from experiments/weights/base-q2-progress.pt, batch 16 of 256² crops,
#      for BASE_S seconds each (the learning rate drops ÷10 for the last 15% of that time);
#   2. per quality: training latents of BSDS500 train + test, then the 2×2 and 4×4 proxies and the
#      autoregressive model, all nine in parallel for CTX_S seconds, with held-out curves on the
#      embedded photographs every 1,000 steps.
# The training photos travel packed (experiments/pack_images.py) in $DATA:
#   python experiments/pack_images.py --out .gpudata/train --quality 85 --max-side 480 \
#       $D/bsds500/train $D/bsds500/test $D/sun_hays80 $D/urban100
#   mkdir -p .gpudata/val && cp $(ls $D/bsds500/val/* | head -24) .gpudata/val/
# Give every process few CPU threads (--threads): nine processes with torch's default of one
# thread per core each ran their context-model steps at about 1 step/s on a 16-core H200 machine.
# Run from the repository root:  BASE_S=330 CTX_S=150 bash experiments/gpu_train_models.sh
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
DATA=${DATA:-.gpudata}
OUT=${OUT:-gpu_out}
BASE_S=${BASE_S:-330}
CTX_S=${CTX_S:-150}
CTX_STEPS=${CTX_STEPS:-20000}
DEVICE=${DEVICE:-cuda}
WORK=${WORK:-/tmp/orderopt-gpu}
mkdir -p "$OUT" "$WORK"
declare -A LMBDA=([1]=0.0018 [2]=0.0067 [3]=0.0250)
python - <<'PY'
import torch; print(torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu")
PY
start=$(date +%s)
for q in 1 2 3; do
  python -m orderopt.train base --images "$DATA"/train/* --val-images "$DATA/val" --val-count 24 \
    --lmbda "${LMBDA[$q]}" --N 96 --M 128 --batch 16 --crop 256 --steps 1000000 --lr 1e-4 \
    --init experiments/weights/base-q2-progress.pt --out "$WORK/base-q$q.pt" --time-limit "$BASE_S" \
    --val-every 2000 --ckpt-every 1000 --threads 4 --device "$DEVICE" > "$WORK/base-q$q.log" 2>&1 &
done
(sleep 90; nvidia-smi) > "$WORK/smi.log" 2>&1 &
wait
echo "base models done after $(( $(date +%s) - start )) s"
for q in 1 2 3; do
  python -m orderopt.train export --ckpt "$WORK/base-q$q.pt" --out "$WORK/q$q/base.pt"
  tar -cf "$OUT/base-q$q.tar" -C "$WORK" "q$q/base.pt" "base-q$q.log"
done
for q in 1 2 3; do
  OMP_NUM_THREADS=2 python -m orderopt.latents --images "$DATA/train/train" "$DATA/train/test" --model "$WORK/q$q/base.pt" \
    --out "$WORK/q$q/train_latents.pt" --device "$DEVICE" > "$WORK/q$q/latents.log" 2>&1 &
  OMP_NUM_THREADS=2 python -m orderopt.latents --model "$WORK/q$q/base.pt" --out "$WORK/q$q/held_latents.pt" \
    --device "$DEVICE" > "$WORK/q$q/held_latents.log" 2>&1 &
done
wait
echo "latents done after $(( $(date +%s) - start )) s"
for q in 1 2 3; do
  COMMON=(--train-latents "$WORK/q$q/train_latents.pt" --eval-latents "$WORK/q$q/held_latents.pt"
          --steps "$CTX_STEPS" --batch 16 --crop 16 --seed 0 --eval-every 1000 --time-limit "$CTX_S"
          --threads 1 --device "$DEVICE")
  python -m orderopt.train context --proxy --patch 2 "${COMMON[@]}" --out "$WORK/q$q/proxy_k2.pt" \
    > "$WORK/q$q/proxy_k2.log" 2>&1 &
  python -m orderopt.train context --proxy --patch 4 "${COMMON[@]}" --out "$WORK/q$q/proxy_k4.pt" \
    > "$WORK/q$q/proxy_k4.log" 2>&1 &
  python -m orderopt.train context --kind autoregressive "${COMMON[@]}" --out "$WORK/q$q/autoregressive.pt" \
    > "$WORK/q$q/autoregressive.log" 2>&1 &
done
wait
echo "context models done after $(( $(date +%s) - start )) s"
for q in 1 2 3; do
  files=()
  for name in proxy_k2 proxy_k4 autoregressive; do
    python -m orderopt.train export --ckpt "$WORK/q$q/$name.pt" --out "$WORK/q$q/$name-fp16.pt" \
      && files+=("q$q/$name-fp16.pt" "q$q/$name.json")
  done
  tar -cf "$OUT/context-q$q.tar" -C "$WORK" "${files[@]}" q$q/{latents,held_latents,proxy_k2,proxy_k4,autoregressive}.log
done
tar -cf "$OUT/logs.tar" -C "$WORK" base-q1.log base-q2.log base-q3.log smi.log
echo "all done after $(( $(date +%s) - start )) s"
