#!/usr/bin/env bash
# Builds the libFuzzer targets (fuzz/: clang, with AddressSanitizer and UBSan) in build-fuzz and
# runs each: first its regression inputs (fuzz/regressions/<target>: every crash found so far
# must pass), then fuzzing from its checked-in seed corpus (fuzz/corpus/<target>, copied to a
# scratch directory so the checked-in one stays small) for SECONDS. Two fuzzers run at a time.
# A crash, a leak, a timeout (10 s) or an input over 2 GB of memory fails the script and leaves
# the input in build-fuzz/artifacts/ (add it to fuzz/regressions/<target>/ once fixed). Prints
# per fuzzer: executions, coverage (edges) and the corpus it grew.
#   scripts/fuzz.sh [SECONDS] [TARGET...]     default 60 seconds, every target
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
shift || true
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(config route safetensors corpus run_dir)

# Line tables only (-gline-tables-only): enough for symbolised crash reports, faster to build.
cmake -S . -B build-fuzz -G Ninja -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O2 -gline-tables-only -DNDEBUG" -DSPARSEMOE_FUZZ=ON -DSPARSEMOE_BUILD_TESTS=OFF -DSPARSEMOE_BUILD_BENCHMARKS=OFF >/dev/null
cmake --build build-fuzz --target fuzzers
mkdir -p build-fuzz/artifacts build-fuzz/logs
export ASAN_OPTIONS=detect_leaks=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

run_one() {  # target
  local t=$1 bin=build-fuzz/fuzz/fuzz_$1 work
  local log=build-fuzz/logs/$1.log
  if compgen -G "fuzz/regressions/$t/*" >/dev/null; then
    "$bin" fuzz/regressions/"$t"/* >"$log.regressions" 2>&1 ||
      { echo "fuzz $t: a regression input fails again (see $log.regressions)"; return 1; }
  fi
  work=$(mktemp -d)
  cp fuzz/corpus/"$t"/* "$work"/
  local status=0
  "$bin" "$work" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix=build-fuzz/artifacts/"$t"- >"$log" 2>&1 || status=$?
  local runs cov units
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
  units=$(find "$work" -type f | wc -l)
  rm -rf "$work"
  if [[ $status -ne 0 ]]; then
    echo "fuzz $t: FAILED (status $status) after ${runs:-?} executions; see $log"
    grep -E 'ERROR|runtime error|SUMMARY' "$log" | head -5
    return 1
  fi
  echo "fuzz $t: ${runs} executions in ${secs} s, coverage ${cov} edges, corpus ${units} inputs, 0 crashes"
}

failed=0
pids=()
for t in "${targets[@]}"; do
  run_one "$t" &
  pids+=($!)
  if [[ ${#pids[@]} -ge 2 ]]; then
    wait "${pids[0]}" || failed=1
    pids=("${pids[@]:1}")
  fi
done
for p in "${pids[@]}"; do wait "$p" || failed=1; done
exit $failed
