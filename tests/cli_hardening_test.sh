#!/usr/bin/env bash
# Hostile input and hostile environments from the command line (issue 12): sizes that would
# overflow or exhaust memory, an absurd thread count, strict JSON, a second `train` on a run that
# is running, a run stopped before its first checkpoint, a read-only and a full run directory,
# `predict` on invalid UTF-8 and on an 8 MB line, `report` outside a run, and resuming a finished
# run. Each case would fail if its guarantee broke. Needs root (it mounts a small tmpfs and a
# read-only one).
source "$(dirname "$0")/cli_lib.sh"
mounts=()
cleanup() {
  for m in "${mounts[@]}"; do umount "$m" 2>/dev/null; done
  rm -rf "$tmp"
}
trap cleanup EXIT
quick=(--set pretrain.steps=20 --set finetune.steps=20 --set eval_every=0 --threads 1 --quiet)

# ---- sizes that overflow or exceed the machine, and the thread count
route() { echo "$1" | "$bin" route; }
for req in '{"router":"tokens_choose","capacity":4611686018427387904,"logits":[[[1,2,3,4]]]}' \
           '{"router":"tokens_choose","capacity_factor":1e300,"logits":[[[1,2,3,4]]]}' \
           '{"router":"top2","capacity":2147483644,"logits":[[[1,2,3,4]]]}' \
           '{"router":"tokens_choose","k":1.5,"logits":[[[1,2,3,4]]]}' \
           '{"router":"top2","seed":-1,"logits":[[[1,2,3,4]]]}' \
           '{"router":"top2","router":"tokens_choose","logits":[[[1,2,3,4]]]}'; do
  err=$(route "$req" 2>&1 >/dev/null); status=$?
  [[ $status -eq 2 && "$err" == "sparsemoe: error: "* && "$err" != *"json.exception"* ]] ||
    { echo "FAIL: route $req: status $status: $err"; fail=1; }
done
[[ $(route '{"router":"tokens_choose","capacity_factor":1e300,"logits":[[[1,2,3,4]]]}' 2>&1) == \
   *"capacity_factor: 1e+300 gives an expert capacity of 2.5e+299"* ]] || { echo "FAIL: cf message"; fail=1; }
# The route fuzzer's regression inputs: an answer or a named error, never a crash (the ASan build
# runs this test too).
for f in "$(dirname "$0")"/../fuzz/regressions/route/*; do
  "$bin" route "$f" >/dev/null 2>&1; status=$?
  ((status == 0 || status == 2)) || { echo "FAIL: route $f: status $status"; fail=1; }
done
# 20,000 tokens in one group: the dense answer would need gigabytes; refused, naming the limit.
big=$(/usr/bin/python3 -c 'print("{\"router\":\"experts_choose\",\"logits\":[[" + ",".join(["[1,2]"] * 20000) + "]]}")')
err=$(route "$big" 2>&1 >/dev/null); status=$?
[[ $status -eq 2 && "$err" == *"would hold 400000000 values each; the limit is"* ]] ||
  { echo "FAIL: big route: $status $err"; fail=1; }
err=$("$bin" bench moe --threads 100000 2>&1 >/dev/null); status=$?
[[ $status -eq 2 && "$err" == "--threads: Value 100000 not in range 1 to 1024"* ]] ||
  { echo "FAIL: --threads 100000: status $status: $err"; fail=1; }
err=$("$bin" train --config "$tmp/config.json" --out "$tmp/never" --threads 100000 2>&1 >/dev/null)
[[ $? -eq 2 && "$err" == "--threads: Value 100000 not in range 1 to 1024"* ]] ||
  { echo "FAIL: train --threads 100000: $err"; fail=1; }
expect_error "inner_dim 4611686018427387904" bench model --preset fast_sparse_mixer \
  --set inner_dim=4611686018427387904
expect_error "needed, more than this machine's memory" bench model --preset fast_sparse_mixer \
  --set hidden_size=1000000000 --set num_attention_heads=1
expect_error "batch_size: expected an integer, got 1.5" train --config "$tmp/config.json" \
  --set batch_size=1.5 --out "$tmp/never"
expect_error "seed: expected an integer in [0, 2^64-1], got -1" train --config "$tmp/config.json" \
  --set seed=-1 --out "$tmp/never"
expect_error "pretrain.optimizer.warmup_steps: expected <= the phase's 20 steps, got 30" \
  train --config "$tmp/config.json" --set pretrain.steps=20 \
  --set pretrain.optimizer.warmup_steps=30 --out "$tmp/never"
printf '{"batch_size": 8, "batch_size": 4}' >"$tmp/dup.json"
expect_error "duplicate key 'batch_size'" train --config "$tmp/dup.json" --out "$tmp/never"
expect_error "training (an estimate of its peak memory): 9.6e+19 bytes needed" train --config "$tmp/config.json" --set model.hidden_size=1e9 \
  --set model.num_attention_heads=1 --out "$tmp/never"
[[ ! -e "$tmp/never" ]] || { echo "FAIL: a refused config left $tmp/never behind"; fail=1; }

# ---- a run to use
"$bin" train --config "$tmp/config.json" --out "$tmp/run" "${quick[@]}" >/dev/null 2>&1 ||
  { echo "FAIL: the quick run"; fail=1; }
# eval on a run whose config.json says inner_dim 2^63 - 1.
cp -r "$tmp/run" "$tmp/huge"
/usr/bin/python3 - "$tmp/huge/config.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1])); c["model"]["inner_dim"] = 2**63 - 1
json.dump(c, open(sys.argv[1], "w"))
PY
expect_error "needed, more than this machine's memory" eval "$tmp/huge"

# Resuming a finished run changes nothing.
before=$(sha256sum "$tmp/run/metrics.jsonl" "$tmp/run/checkpoint.safetensors" "$tmp/run/results.json")
err=$("$bin" train --resume --out "$tmp/run" 2>&1 >/dev/null) || { echo "FAIL: resume finished"; fail=1; }
[[ "$err" == *"is finished (step 40); nothing to do"* ]] || { echo "FAIL: resume finished said: $err"; fail=1; }
[[ "$before" == "$(sha256sum "$tmp/run/metrics.jsonl" "$tmp/run/checkpoint.safetensors" "$tmp/run/results.json")" ]] ||
  { echo "FAIL: resuming a finished run changed its files"; fail=1; }

# predict: invalid UTF-8 is echoed with U+FFFD and the lines after it are answered; an 8 MB line
# is read in bounded memory.
out=$(printf 'the lion\n\xff\xfe broken \xc3\n old hammer\n' | "$bin" predict "$tmp/run" --json) ||
  { echo "FAIL: predict on invalid UTF-8 exit status"; fail=1; }
[[ $(echo "$out" | wc -l) -eq 3 && "$out" == *$'\xef\xbf\xbd'*"old hammer"* ]] ||
  { echo "FAIL: predict on invalid UTF-8: $out"; fail=1; }
/usr/bin/python3 -c 'print("lion tiger " * 800000)' >"$tmp/long.txt"
/usr/bin/time -f "%M" -o "$tmp/rss" "$bin" predict "$tmp/run" <"$tmp/long.txt" >"$tmp/long.out" ||
  { echo "FAIL: predict on an 8 MB line"; fail=1; }
rss_kb=$(tail -1 "$tmp/rss")
((rss_kb < 400000)) || { echo "FAIL: predict on an 8 MB line peaked at ${rss_kb} kB"; fail=1; }
[[ $(wc -l <"$tmp/long.out") -eq 1 ]] || { echo "FAIL: predict long line output"; fail=1; }

# report writes only into a run directory.
mkdir -p "$tmp/plain"
expect_error "is not a run directory" report "$tmp/plain"
[[ ! -e "$tmp/plain/report.html" ]] || { echo "FAIL: report wrote into a plain directory"; fail=1; }

# ---- a second train on a running run is refused by the lock
"$bin" train --config "$tmp/config.json" --out "$tmp/busy" --set pretrain.steps=100000 \
  --threads 1 --quiet >/dev/null 2>&1 &
pid=$!
for ((t = 0; t < 600; t++)); do [[ -f "$tmp/busy/checkpoint.safetensors" ]] && break; sleep 0.05; done
expect_error "is in use by another \`sparsemoe train\`: '$tmp/busy/.lock' is held by another process (pid $pid)" \
  train --resume --out "$tmp/busy"
expect_error "is in use by another" train --config "$tmp/config.json" --out "$tmp/busy"
kill -9 "$pid"; wait "$pid" 2>/dev/null
# Killed, the lock is gone with the process: the run resumes.
"$bin" train --resume --out "$tmp/busy" --stop-after 3 --quiet >/dev/null 2>&1 ||
  { echo "FAIL: resume after the lock holder was killed"; fail=1; }

# ---- Ctrl-C while SentencePiece trains (it cannot be interrupted) exits at once with nothing kept
/usr/bin/python3 -c '
import random
r = random.Random(5)
w = ["w%d" % i for i in range(30000)]
print("\n".join("l%d\t%s" % (i % 3, " ".join(r.choice(w) for _ in range(12))) for i in range(150000)))
' >"$tmp/big.tsv"
"$bin" train --config "$tmp/config.json" --set data.path="$tmp/big.tsv" \
  --set tokenizer.vocab_size=8000 --out "$tmp/intr" --threads 1 2>"$tmp/intr.err" >/dev/null &
pid=$!
for ((t = 0; t < 600; t++)); do grep -q "tokenizer: training" "$tmp/intr.err" && break; sleep 0.05; done
kill -INT "$pid"; wait "$pid"; status=$?
[[ $status -eq 130 ]] && grep -q "interrupted while preparing the run; nothing to keep" "$tmp/intr.err" ||
  { echo "FAIL: SIGINT during tokenizer training: status $status"; cat "$tmp/intr.err"; fail=1; }

# ---- a run stopped before its first checkpoint is started again, by train or by --resume
cp -r "$tmp/run" "$tmp/stuck"
rm "$tmp/stuck/checkpoint.safetensors" "$tmp/stuck/results.json"
touch "$tmp/stuck/.checkpoint.safetensors.tmpAbC123"  # a temporary left by a kill
err=$("$bin" train --resume --out "$tmp/stuck" --threads 1 2>&1 >/dev/null) ||
  { echo "FAIL: --resume of a run without a checkpoint: $err"; fail=1; }
[[ "$err" == *"stopped before its first checkpoint: starting it again"* ]] ||
  { echo "FAIL: --resume of a stuck run said: $err"; fail=1; }
[[ ! -e "$tmp/stuck/.checkpoint.safetensors.tmpAbC123" ]] || { echo "FAIL: stale temporary kept"; fail=1; }
cmp -s "$tmp/run/checkpoint.safetensors" "$tmp/stuck/checkpoint.safetensors" ||
  { echo "FAIL: the restarted run differs from the original"; fail=1; }
rm "$tmp/stuck/checkpoint.safetensors"
"$bin" train --config "$tmp/config.json" --out "$tmp/stuck" "${quick[@]}" >/dev/null 2>&1 ||
  { echo "FAIL: train into a run without a checkpoint"; fail=1; }

# ---- a read-only --out fails before any work; a full disk fails clearly and keeps the checkpoint
mount_tmpfs() {  # dir, options
  mkdir -p "$1"
  if mount -t tmpfs -o "$2" tmpfs "$1" 2>/dev/null; then mounts+=("$1"); return 0; fi
  return 1
}
if ! mount_tmpfs "$tmp/ro" "size=1m,ro"; then
  echo "FAIL: cannot mount a tmpfs (the disk cases need root)"; fail=1
else
  expect_error "--out '$tmp/ro/run': cannot create the directory: Read-only file system" \
    train --config "$tmp/config.json" --out "$tmp/ro/run"
  mkdir -p "$tmp/ro2" && mount_tmpfs "$tmp/ro2" "size=1m" && mkdir "$tmp/ro2/run" &&
    mount -o remount,ro "$tmp/ro2"
  expect_error "is not writable: cannot create the lock file" train --config "$tmp/config.json" \
    --out "$tmp/ro2/run"
  # Room for the files of step 0 plus half a checkpoint: the next checkpoint cannot be written.
  size=$(stat -c %s "$tmp/run/checkpoint.safetensors" "$tmp/run/tokenizer.model" | \
         awk 'NR == 1 {s += 1.5 * $1} NR > 1 {s += $1} END {printf "%d", s + 16384}')
  mount_tmpfs "$tmp/full" "size=$size"
  err=$("$bin" train --config "$tmp/config.json" --out "$tmp/full/run" "${quick[@]}" \
        --set checkpoint_every=5 --set log_every=1000 2>&1 >/dev/null); status=$?
  [[ $status -eq 2 && "$err" == *"No space left on device"* ]] ||
    { echo "FAIL: full disk: status $status: $err"; fail=1; }
  step=$("$bin" inspect "$tmp/full/run" --json | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["step"])')
  [[ "$step" == "0" ]] || { echo "FAIL: the checkpoint after a full disk: step '$step'"; fail=1; }
  ls -a "$tmp/full/run" | grep -q '\.tmp' && { echo "FAIL: a temporary left on the full disk"; fail=1; }
fi
exit $fail
