#!/usr/bin/env bash
# End-to-end test of training from the command line: `sparsemoe train` on a small synthetic
# label<TAB>text corpus; a real SIGINT saves a checkpoint and exits 130, and `--resume` ends with
# a checkpoint byte-identical to an uninterrupted run's; `--compare-dense` trains the dense
# baseline; `eval`, `predict` (text and --json) and `inspect` use the run; the HTML report renders
# in headless Chromium with every chart drawn; bad arguments exit with status 2 and one line
# naming the problem.
source "$(dirname "$0")/cli_lib.sh"

# The uninterrupted run.
out=$("$bin" train --config "$tmp/config.json" --out "$tmp/full" --threads 2 2>"$tmp/full.err") ||
  { echo "FAIL: train exit status"; cat "$tmp/full.err"; fail=1; }
[[ "$out" == *"test accuracy"*"majority class"* ]] || { echo "FAIL: train output: $out"; fail=1; }
grep -q "pretrain step 150 dev" "$tmp/full.err" || { echo "FAIL: no dev evaluation line"; fail=1; }

# The same run, interrupted by SIGINT once it has logged a few steps, then resumed.
"$bin" train --config "$tmp/config.json" --out "$tmp/split" --threads 2 2>"$tmp/split.err" >/dev/null &
pid=$!
for ((t = 0; t < 600; t++)); do
  [[ -f "$tmp/split/metrics.jsonl" ]] && (($(wc -l < "$tmp/split/metrics.jsonl") >= 5)) && break
  sleep 0.05
done
kill -INT "$pid"
wait "$pid"
status=$?
if ((status == 0)); then
  echo "NOTE: the run finished before SIGINT arrived; the signal path was not exercised"; fail=1
else
  [[ $status -eq 130 ]] || { echo "FAIL: SIGINT exit status $status (want 130)"; fail=1; }
  grep -q "interrupted at step .*continue with: sparsemoe train --resume" "$tmp/split.err" ||
    { echo "FAIL: interrupt message"; cat "$tmp/split.err"; fail=1; }
fi
"$bin" train --resume --out "$tmp/split" --threads 1 >/dev/null 2>"$tmp/resume.err" ||
  { echo "FAIL: resume exit status"; cat "$tmp/resume.err"; fail=1; }
cmp -s "$tmp/full/checkpoint.safetensors" "$tmp/split/checkpoint.safetensors" ||
  { echo "FAIL: interrupted + resumed checkpoint differs from the uninterrupted one"; fail=1; }
cmp -s "$tmp/full/results.json" "$tmp/split/results.json" || { echo "FAIL: results differ"; fail=1; }

# The main job's comparison: a dense model of the same shape trained for the same time.
out=$("$bin" train --config "$tmp/config.json" --set pretrain.steps=20 --set finetune.steps=20 \
      --out "$tmp/cmp" --compare-dense --quiet) || { echo "FAIL: --compare-dense exit status"; fail=1; }
[[ "$out" == *"sparse mixer (MoE)"*"dense, same shape, same time"*"majority class"* ]] ||
  { echo "FAIL: --compare-dense output: $out"; fail=1; }
[[ -f "$tmp/cmp/comparison.json" && -f "$tmp/cmp/dense/checkpoint.safetensors" ]] ||
  { echo "FAIL: --compare-dense files"; fail=1; }
grep -q '"moe_layers": \[\]' "$tmp/cmp/dense/config.json" || { echo "FAIL: the baseline has MoE layers"; fail=1; }
[[ ! -e "$tmp/cmp/dense.timing" ]] || { echo "FAIL: the timing scratch run was left behind"; fail=1; }

# Using the run.
out=$("$bin" eval "$tmp/full") || { echo "FAIL: eval exit status"; fail=1; }
[[ "$out" == *"accuracy"*"majority class"*"most frequent confusions"* ]] || { echo "FAIL: eval output: $out"; fail=1; }
out=$("$bin" eval "$tmp/full" --split dev --json) || { echo "FAIL: eval --json exit status"; fail=1; }
[[ "$out" == *'"split": "dev"'* && "$out" == *'"confusion": ['* ]] || { echo "FAIL: eval --json: $out"; fail=1; }
out=$(printf 'the lion with a tiger\n\nold hammer and a saw\n' | "$bin" predict "$tmp/full") ||
  { echo "FAIL: predict exit status"; fail=1; }
[[ $(echo "$out" | wc -l) -eq 2 ]] || { echo "FAIL: predict lines: $out"; fail=1; }
out=$(echo "honey and bread" | "$bin" predict "$tmp/full" --json --top 2) || { echo "FAIL: predict --json"; fail=1; }
[[ "$out" == '{"label":'*'"top":[{"label":'*'"probability":'*'},{'*'}]}' ]] || { echo "FAIL: predict --json: $out"; fail=1; }
out=$("$bin" inspect "$tmp/full") || { echo "FAIL: inspect exit status"; fail=1; }
[[ "$out" == *"parameters:"*"layer 1: tokens per expert"* ]] || { echo "FAIL: inspect: $out"; fail=1; }

# The report renders in a headless browser with every chart laid out and drawn.
chrome=$(command -v chromium || command -v chromium-browser || true)
if [[ -z "$chrome" ]]; then
  echo "FAIL: chromium is not installed (scripts/setup.sh installs it)"; fail=1
else
  dom=$(timeout 60 "$chrome" --headless --no-sandbox --disable-gpu --dump-dom \
        "file://$tmp/full/report.html" 2>"$tmp/chrome.err")
  body=$(echo "$dom" | grep -o '<body[^>]*>')
  charts=$(echo "$body" | sed -n 's/.*data-charts="\([0-9]*\)".*/\1/p')
  rendered=$(echo "$body" | sed -n 's/.*data-rendered="\([0-9]*\)".*/\1/p')
  if [[ -z "$charts" || "$charts" -lt 4 || "$charts" != "$rendered" ]]; then
    echo "FAIL: report rendering: '$body'"; tail -5 "$tmp/chrome.err"; fail=1
  fi
  grep -q "Uncaught" "$tmp/chrome.err" && { echo "FAIL: script error in the report"; fail=1; }
  [[ "$dom" == *"Training and dev loss"*"Expert load, layer_1"*"Tokens left behind"* ]] ||
    { echo "FAIL: report sections missing"; fail=1; }
fi

expect_error "already holds a run" train --config "$tmp/config.json" --out "$tmp/full"
expect_error "do not give --config or --set" train --resume --config "$tmp/config.json" --out "$tmp/full"
expect_error "unknown key 'pretrian'" train --config "$tmp/config.json" --set pretrian.steps=1 --out "$tmp/x"
expect_error "--compare-dense needs a new run" train --resume --out "$tmp/full" --compare-dense
expect_error "is not a run directory" eval "$tmp/nothing"
expect_error "--split: expected train, dev or test" eval "$tmp/full" --split val
expect_error "--out: the run directory is required" train --config "$tmp/config.json"
exit $fail
