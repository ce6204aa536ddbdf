#!/usr/bin/env bash
# The checks and timings that need a CUDA GPU, in one go (a lent GPU's time is short).
#   [STEPS="tests decode search context train verify"] bash experiments/gpu_checks.sh OUT_DIR
# tests:   the CUDA variants of the tests (exact codec round trips with the networks on the
#          GPU; GPU cost table and GPU context features equal to the CPU reference);
# decode:  decoding time with the networks on the GPU, ŷ coded with orderopt.rans (context
#          network in float32 and in bfloat16, tensor cores) and with constriction's Gaussian
#          (float32 only) -> OUT_DIR/decode_time_cuda{,_gaussian}.{json,md};
# search:  the exact 4×4 optimum (DP over the full 2^16 × 16 cost table) with the cost table on
#          the GPU -> OUT_DIR/search-patch4-dp-cuda (compare with results/search-patch4-dp, CPU);
# context: rate-engine speed on the GPU -> OUT_DIR/bench_context_cuda.{json,md};
# train:   context-model training speed on the GPU -> OUT_DIR/bench_train_cuda.{json,md};
# verify:  end to end, `search --patch 2 --verify 2` with the dedicated models trained on the
#          GPU (on the embedded photographs, at most 300 steps, stopped early by default: a smoke run,
#          not a verification).
# Packages the GPU machine's image lacks (it has no internet) are installed from wheels in
# .whl/ (git-ignored; carry it: `pip download constriction numba llvmlite --no-deps
# --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 -d .whl`).
set -uo pipefail
out=${1:?usage: gpu_checks.sh OUT_DIR}
for mod in constriction numba; do
  if ! python3 -c "import $mod" 2>/dev/null; then
    wheels=$(ls .whl/"$mod"-*.whl 2>/dev/null; [ "$mod" = numba ] && ls .whl/llvmlite-*.whl 2>/dev/null)
    python3 -m pip install -q --no-deps --target /tmp/site $wheels
  fi
done
export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
steps=" ${STEPS:-tests decode search context train verify} "
mkdir -p "$out"
export PYTHONUNBUFFERED=1
nvidia-smi -L
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"
if [[ $steps == *" tests "* ]]; then
  timeout 180 python3 -m pytest -q -p no:cacheprovider -k cuda \
    tests/test_codec.py tests/test_costs.py tests/test_context.py tests/test_train.py 2>&1 | tail -4
fi
if [[ $steps == *" decode "* ]]; then
  timeout 300 python3 experiments/bench_decode.py --device cuda --out "$out" 2>&1 | tail -13
  timeout 240 python3 experiments/bench_decode.py --device cuda --coder gaussian --precision float32 \
    --out "$out" 2>&1 | tail -7
fi
if [[ $steps == *" search "* ]]; then
  ( time timeout 300 python3 -m orderopt.search --patch 4 --strategy dp --device cuda \
      --out "$out/search-patch4-dp-cuda" --cache-dir /tmp/orderopt-cache ) 2>&1 | tail -12
fi
if [[ $steps == *" context "* ]]; then
  timeout 240 python3 experiments/bench_context.py --device cuda --out "$out" 2>&1 | tail -5
fi
if [[ $steps == *" train "* ]]; then
  timeout 240 python3 experiments/bench_train.py --device cuda --steps 200 --out "$out" 2>&1 | tail -5
fi
if [[ $steps == *" verify "* ]]; then
  python3 -c "
import os; from PIL import Image; from orderopt import data; from orderopt.evaluate import to_uint8
os.makedirs('/tmp/photos', exist_ok=True)
for im in data.load_images(None): Image.fromarray(to_uint8(im.image)).save(f'/tmp/photos/{im.name}.png')"
  ( time timeout 300 python3 -m orderopt.search --patch 2 --verify 2 --device cuda --train-images /tmp/photos \
      --verify-steps 300 --out "$out/verify-smoke" --cache-dir /tmp/orderopt-cache ) 2>&1 | tail -16
fi
