#!/usr/bin/env bash
# Bitwise golden check for refactors that must not change results (issue 11). Builds the
# recorder (tests/golden/record.cc) and the CLI at a baseline commit, in a git worktree, and in
# this working tree; runs on both:
#   * the recorder: every MoE configuration the tests use, both MoE paths, lingvo's gates with
#     experts and the tiny Sparse Mixer with each router, two steps each, at 1 and 2 threads
#     (hashes of every output, input gradient and parameter gradient, and the metrics);
#   * `sparsemoe route` on tests/golden/route_inputs.jsonl (stdout, stderr and exit status);
#   * a fixed-seed wordnet_tiny training (200 pretraining + 200 fine-tuning steps): the final
#     checkpoint's bytes and metrics.jsonl without its timing fields;
# then compares them byte for byte. Both trees are compiled on this machine, so the comparison
# holds whatever the CPU; figures from another machine are not comparable.
#   scripts/golden.sh [BASELINE_COMMIT]      default: tests/golden/BASELINE
#   GOLDEN_SKIP_TRAIN=1 scripts/golden.sh    skips the training (it takes a few minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
base=${1:-$(cat tests/golden/BASELINE)}
work=$root/build-golden
mkdir -p "$work"

build() {  # source dir, build dir
  cmake -S "$1" -B "$2" -G Ninja -DCMAKE_BUILD_TYPE=Release -DSPARSEMOE_BUILD_BENCHMARKS=OFF \
    >/dev/null
  cmake --build "$2" -j "$(nproc)" --target sparsemoe_golden sparsemoe_cli >/dev/null
}

record() {  # build dir, output dir
  local bin=$1 out=$2
  rm -rf "$out" && mkdir -p "$out"
  "$bin/tests/sparsemoe_golden" >"$out/layers.json"
  : >"$out/route.txt"
  while IFS= read -r line; do
    local rc=0
    printf '%s\n' "$line" | "$bin/sparsemoe" route >>"$out/route.txt" 2>&1 || rc=$?
    echo "exit $rc" >>"$out/route.txt"
  done <"$root/tests/golden/route_inputs.jsonl"
  if [[ -z "${GOLDEN_SKIP_TRAIN:-}" ]]; then
    "$bin/sparsemoe" train --config "$root/configs/wordnet_tiny.json" --out "$out/run" \
      --threads 2 >/dev/null 2>&1
    sha256sum <"$out/run/checkpoint.safetensors" >"$out/checkpoint.sha256"
    /usr/bin/python3 - "$out/run/metrics.jsonl" >"$out/metrics.txt" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    for k in [k for k in r if "per_s" in k or "time" in k or k.endswith("_ms") or k == "seconds"]:
        del r[k]
    print(json.dumps(r, sort_keys=True))
PY
  fi
}

echo "golden: baseline $base"
if [[ ! -e "$work/base-src/.git" ]]; then
  git worktree add --detach "$work/base-src" "$base" >/dev/null 2>&1
else
  git -C "$work/base-src" checkout --detach -q "$base"
fi
build "$work/base-src" "$work/base-build"
build "$root" "$root/build"
record "$work/base-build" "$work/base-out"
record "$root/build" "$work/head-out"

status=0
for f in layers.json route.txt checkpoint.sha256 metrics.txt; do
  [[ -e "$work/base-out/$f" ]] || continue
  if cmp -s "$work/base-out/$f" "$work/head-out/$f"; then
    echo "golden: $f identical"
  else
    echo "golden: $f DIFFERS (diff $work/base-out/$f $work/head-out/$f)"
    status=1
  fi
done
exit $status
