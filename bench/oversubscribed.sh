#!/usr/bin/env bash
# Two trainings at once on the same cores (issue 13, item 4): each run's training throughput
# (tokens/s of its training records) next to a solo run's, and the ratio. On 2 cores with
# 2 threads each, spinning OpenMP threads used to cut it to a tenth.
#   bench/oversubscribed.sh [STEPS] [THREADS] [BINARY]    defaults: 150, 2, build/sparsemoe
# Extra environment (OMP_WAIT_POLICY, GOMP_SPINCOUNT) passes through to the runs.
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-150}
threads=${2:-2}
bin=${3:-build/sparsemoe}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

run() {  # out dir
  "$bin" train --config configs/wordnet_tiny.json --out "$1" --threads "$threads" \
    --stop-after "$steps" --set log_every=10 --set eval_every=0 --quiet >/dev/null 2>&1
}
tokens_per_s() {  # run dir: the median over its training records, the first one left out
  /usr/bin/python3 - "$1/metrics.jsonl" <<'PY'
import json, statistics, sys
r = [json.loads(l)["tokens_per_s"] for l in open(sys.argv[1]) if '"event":"train"' in l]
print("%.0f" % statistics.median(r[1:]))
PY
}

run "$tmp/solo"
solo=$(tokens_per_s "$tmp/solo")
run "$tmp/a" &
a=$!
run "$tmp/b" &
b=$!
wait "$a" "$b"
ta=$(tokens_per_s "$tmp/a")
tb=$(tokens_per_s "$tmp/b")
cpu=$(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)
echo "cpu: $cpu, $(nproc) cores; $threads threads per run; OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-(unset)} GOMP_SPINCOUNT=${GOMP_SPINCOUNT:-(unset)}"
echo "solo: $solo tokens/s"
echo "two at once: $ta and $tb tokens/s ($(/usr/bin/python3 -c "print('%.0f%% and %.0f%% of solo' % (100*$ta/$solo, 100*$tb/$solo))"))"
