#!/usr/bin/env bash
# Crash consistency under SIGKILL (issue 12): a training that checkpoints and logs at every step is
# killed with SIGKILL at 20 pseudo-random instants (a fixed seed, so the instants repeat) and
# continued after each kill: `train --resume`, or `train --config` again when the kill came before
# config.json existed. After every kill:
#   * every file of the run directory loads (config.json, labels.json, the tokenizer and the
#     checkpoint through `sparsemoe inspect`; metrics.jsonl parses except a torn last line);
#   * nothing before the last checkpoint is lost: metrics.jsonl holds a training record for every
#     step up to the checkpoint's;
# and at the end the checkpoint is byte-identical to an uninterrupted run's, and so are the
# training records (without their timing fields).
source "$(dirname "$0")/cli_lib.sh"
args=(--set pretrain.steps=300 --set finetune.steps=300 --set checkpoint_every=1 --set log_every=1
      --set eval_every=20 --threads 1 --quiet)

start=$(date +%s%N)
"$bin" train --config "$tmp/config.json" --out "$tmp/whole" "${args[@]}" >/dev/null 2>&1 ||
  { echo "FAIL: the uninterrupted run"; exit 1; }
whole_ms=$((($(date +%s%N) - start) / 1000000))

check_run() {  # dir: every file loads; metrics cover every step up to the checkpoint
  /usr/bin/python3 - "$1" "$bin" <<'PY'
import json, os, subprocess, sys
d, binary = sys.argv[1], sys.argv[2]
def fail(m):
    print("FAIL: " + m); sys.exit(1)
if not os.path.isdir(d):
    sys.exit(0)  # killed before the run directory was created: nothing to load yet
names = os.listdir(d)
for n in ("config.json", "labels.json"):
    if n in names:
        json.load(open(os.path.join(d, n)))
if "checkpoint.safetensors" not in names:
    sys.exit(0)  # killed before the first checkpoint: nothing to keep yet
out = subprocess.run([binary, "inspect", d, "--json"], capture_output=True, text=True)
if out.returncode != 0:
    fail("inspect after a kill: " + out.stderr.strip())
step = json.loads(out.stdout)["step"]
lines = open(os.path.join(d, "metrics.jsonl"), "rb").read().split(b"\n")
records = []
for i, line in enumerate(lines):
    if not line:
        continue
    try:
        records.append(json.loads(line))
    except ValueError:
        if i != len(lines) - 1:  # only the last line may be torn (it has no newline yet)
            fail("metrics.jsonl line %d does not parse" % (i + 1))
logged = {r["step"] for r in records if r.get("event") == "train"}
missing = [s for s in range(1, step + 1) if s not in logged]
if missing:
    fail("metrics.jsonl lost the records of steps %s before the checkpoint at %d" % (missing[:5], step))
print(step)
PY
}

compare_records() {  # a b: the same records but for their timing fields
  /usr/bin/python3 - "$1" "$2" <<'PY'
import json, sys
def records(path):
    out = []
    for line in open(path):
        r = json.loads(line)
        for k in ("tokens_per_s", "seconds"):
            r.pop(k, None)
        out.append(r)
    return out
a, b = records(sys.argv[1]), records(sys.argv[2])
if a != b:
    print("FAIL: %s differs from the uninterrupted run's (%d vs %d records)"
          % (sys.argv[2], len(a), len(b)))
    sys.exit(1)
PY
}

RANDOM=20261129
kills=0 torn=0 before_config=0
run=$tmp/killed
while ((kills < 20)); do
  if [[ -f "$run/config.json" ]]; then
    "$bin" train --resume --out "$run" --threads 1 --quiet >/dev/null 2>&1 &
  else
    ((kills > 0)) && before_config=$((before_config + 1))
    "$bin" train --config "$tmp/config.json" --out "$run" "${args[@]}" >/dev/null 2>&1 &
  fi
  pid=$!
  # An instant within the first twelfth of a whole run's time: 20 of them cannot finish it at an
  # even pace. But under `ctest -j` the uninterrupted run may have been timed beside another test:
  # when that one ends, the resumed runs go faster and can finish before the last kills (seen once
  # on a 2-core VM). A run that finishes after at least 10 kills is checked like the others and
  # ends the kills; one that finishes sooner is a failure (the kills would cover too little).
  delay_ms=$((RANDOM % (whole_ms / 12 + 1)))
  sleep "$(printf '%d.%03d' $((delay_ms / 1000)) $((delay_ms % 1000)))"
  if ! kill -9 "$pid" 2>/dev/null; then
    wait "$pid" || { echo "FAIL: the run after kill $kills exited with an error"; fail=1; }
    if ((kills < 10)); then
      echo "FAIL: the run finished before kill $((kills + 1))"; fail=1
    else
      echo "the run finished after $kills kills (the machine sped up since the timed run)"
    fi
    out=$(check_run "$run") || { echo "$out"; fail=1; }
    break
  fi
  wait "$pid" 2>/dev/null
  kills=$((kills + 1))
  ls -a "$run" 2>/dev/null | grep -q '\.tmp' && torn=$((torn + 1))
  step=$(check_run "$run") || { echo "$step"; fail=1; }
  echo "kill $kills after ${delay_ms} ms: checkpoint at step ${step:-none}"
done
echo "$kills kills; $torn left a temporary file (killed inside an atomic write); $before_config before config.json"
# How many kills land inside a write is up to timing (1 to 5 of 20 in release builds, 0 or 1 under
# ASan), so it is reported, not required; the stale-temporary case of cli_hardening is the
# deterministic one.

"$bin" train --resume --out "$run" --threads 1 --quiet >/dev/null 2>&1 ||
  { echo "FAIL: the final resume"; fail=1; }
cmp -s "$tmp/whole/checkpoint.safetensors" "$run/checkpoint.safetensors" ||
  { echo "FAIL: the checkpoint after 20 kills differs from the uninterrupted run's"; fail=1; }
compare_records "$tmp/whole/metrics.jsonl" "$run/metrics.jsonl" || fail=1

# A torn last line (a kill in the middle of an append) is repaired on resume, deterministically:
# stop a run, tear its metrics, resume; the records equal the uninterrupted run's.
"$bin" train --config "$tmp/config.json" --out "$tmp/torn" "${args[@]}" --stop-after 250 \
  >/dev/null 2>&1 || { echo "FAIL: the run to tear"; fail=1; }
printf '{"event":"train","phase":"pretrain","st' >>"$tmp/torn/metrics.jsonl"
"$bin" train --resume --out "$tmp/torn" --threads 1 --quiet >/dev/null 2>&1 ||
  { echo "FAIL: resume after a torn line"; fail=1; }
compare_records "$tmp/whole/metrics.jsonl" "$tmp/torn/metrics.jsonl" || fail=1
exit $fail
