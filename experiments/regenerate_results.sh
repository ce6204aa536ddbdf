#!/usr/bin/env bash
# Regenerates every file under results/ from the shipped weights (CPU is fine):
#   base model vs JPEG, rate-engine speed, decoding time, and the shipped model's search
#   runs for 2x2 (exhaustive) and 4x4 (greedy + swaps), verified with dedicated models
#   (about 1.5 h of training on 2 CPU cores), with their report. The exact 4x4 optimum:
#   python -m orderopt.search --patch 4 --strategy dp --out results/search-patch4-dp
#   (about 30 minutes of cost table on a 2-core CPU).
#   bash experiments/regenerate_results.sh
set -euo pipefail
cd "$(dirname "$0")/.."
python experiments/base_vs_jpeg.py --out results
python experiments/bench_context.py --out results
python experiments/bench_decode.py --out results
bash experiments/verify_search.sh proxy              # 2x2 and 4x4, dedicated models fine-tuned from the proxy
PATCHES=2 bash experiments/verify_search.sh scratch  # 2x2, dedicated models from scratch
python -m orderopt.search --patch 4 --strategy greedy --random 200 --out results/search-patch4 --force
python -m orderopt.report results/search-patch2-from-proxy results/search-patch4-from-proxy \
    results/search-patch2 --out results/report \
    --decode-time results/decode_time.json
