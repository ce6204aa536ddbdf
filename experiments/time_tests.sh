#!/usr/bin/env bash
# Times the README's test command (`python -m pytest -q`, what CI runs) on this machine, with
# the load average before it starts. Writes results/test_suite_time.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
out=results/test_suite_time.txt
tmp=$(mktemp)
load=$(cut -d' ' -f1-3 /proc/loadavg)
start=$(date +%s.%N)
python -m pytest -q -p no:cacheprovider > "$tmp" 2>&1
end=$(date +%s.%N)
{
  echo "python -m pytest -q: $(tail -n 1 "$tmp" | sed 's/=//g; s/^ *//; s/ *$//'), $(python -c "print(f'{$end - $start:.0f}')") s wall time"
  echo "machine: $(nproc) cores, $(python -c 'import platform; print(platform.processor() or platform.machine())'), load average before start: $load"
  echo "command: bash experiments/time_tests.sh"
} > "$tmp.summary"
mv "$tmp.summary" "$out"
rm -f "$tmp"
cat "$out"
