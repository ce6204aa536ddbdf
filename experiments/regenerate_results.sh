#!/usr/bin/env bash
# Regenerates every file under results/ from the shipped weights (CPU is fine):
#   base model vs JPEG, rate-engine speed, decoding time, and the shipped model's search
#   runs for 2x2 (exhaustive) and 4x4 (greedy + swaps; add --strategy dp for the exact
#   optimum, about 40 minutes of cost table on a 2-core CPU) with their reports.
#   bash experiments/regenerate_results.sh
set -euo pipefail
cd "$(dirname "$0")/.."
python experiments/base_vs_jpeg.py --out results
python experiments/bench_context.py --out results
python experiments/bench_decode.py --out results
python -m orderopt.search --patch 2 --out results/search-patch2 --force
python -m orderopt.search --patch 4 --strategy greedy --random 200 --out results/search-patch4 --force
python -m orderopt.report results/search-patch2 results/search-patch4 --out results/report
