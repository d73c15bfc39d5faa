#!/usr/bin/env bash
# Old binary against new, side by side in one run: `sparsemoe bench moe` (all routers, 4096 tokens,
# 1 and 2 threads) and `sparsemoe bench model` (the presets given), each run alternately with the
# two binaries for ROUNDS rounds, one job at a time; prints the median of each figure per binary
# and new/old. Used to show that a refactor is no slower (issue 11).
#   bench/ab.sh OLD_BIN NEW_BIN [ROUNDS=3] [PRESETS=fast_sparse_mixer,sparse_mixer_base]
set -euo pipefail
old=$1 new=$2 rounds=${3:-3} presets=${4:-fast_sparse_mixer,sparse_mixer_base}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for ((i = 0; i < rounds; ++i)); do
  for side in old new; do
    bin=${!side}
    for t in 1 2; do
      OMP_WAIT_POLICY=PASSIVE "$bin" bench moe --threads "$t" --min-time 0.5 --json \
        >"$out/moe_${side}_${t}_$i.json"
    done
    "$bin" bench model --preset "$presets" --baseline "${presets%%,*}" --batch 4 --threads 2 \
      --min-time 1 --json >"$out/model_${side}_$i.json"
  done
done
grep -m1 "model name" /proc/cpuinfo | sed 's/.*: /cpu: /'
echo "isa: $(grep -o -w 'avx512f\|avx2' /proc/cpuinfo | sort -u | tr '\n' ' ')"
/usr/bin/python3 - "$out" "$rounds" <<'PY'
import glob, json, statistics, sys
d, rounds = sys.argv[1], int(sys.argv[2])
def load(pattern):
    return [json.load(open(p)) for p in sorted(glob.glob(f"{d}/{pattern}"))]
print(f"{'measurement':48} {'old':>10} {'new':>10} {'new/old':>8}")
for t in (1, 2):
    runs = {s: load(f"moe_{s}_{t}_*.json") for s in ("old", "new")}
    for i, r in enumerate(runs["old"][0]["results"]):
        name = f"{r['router']} k{r['k']}"
        for key in ("forward_ms", "forward_backward_ms"):
            o = statistics.median(x["results"][i][key] for x in runs["old"])
            n = statistics.median(x["results"][i][key] for x in runs["new"])
            print(f"{'moe ' + name + ' thr' + str(t) + ' ' + key:48} {o:10.3f} {n:10.3f} {n / o:8.3f}")
runs = {s: load(f"model_{s}_*.json") for s in ("old", "new")}
for i, r in enumerate(runs["old"][0]["results"]):
    for key in ("inference_ms", "train_step_ms"):
        o = statistics.median(x["results"][i][key] for x in runs["old"])
        n = statistics.median(x["results"][i][key] for x in runs["new"])
        print(f"{'model ' + r['preset'] + ' thr2 batch4 ' + key:48} {o:10.3f} {n:10.3f} {n / o:8.3f}")
print("old environment:", runs["old"][0]["environment"])
print("new environment:", runs["new"][0]["environment"])
PY
