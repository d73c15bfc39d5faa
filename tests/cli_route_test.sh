#!/usr/bin/env bash
# End-to-end test of `sparsemoe route`: the D1 worked example through the CLI, and the error
# contract (exit status 2, one line on stderr naming the problem) for each kind of bad input.
set -u
bin=$1
fail=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# D1 (spec peer case), logits = ln(probs).
d1='{"router":"tokens_choose","k":2,"capacity":2,"batch_prioritized_routing":true,"logits":[[[-0.5108256,-1.2039728,-2.3025851],[-1.6094379,-0.3566749,-2.3025851],[-0.6931472,-0.9162907,-2.3025851],[-0.2231436,-1.89712,-2.9957323]]]}'
out=$(echo "$d1" | "$bin" route) || { echo "FAIL: D1 exit status"; fail=1; }
for want in '"capacity":2' '"aux_loss":2.737' '"fraction_tokens_left_behind":0.25' \
            '"dispatch":[[[[0,1],[0,0],[0,0]],[[0,0],[1,0],[0,0]],[[0,0],[0,0],[0,0]],[[1,0],[0,1],[0,0]]]]'; do
  [[ "$out" == *"$want"* ]] || { echo "FAIL: D1 output lacks $want"; fail=1; }
done
echo "$d1" > "$tmp/d1.json"
[[ "$("$bin" route "$tmp/d1.json")" == "$out" ]] || { echo "FAIL: file input differs from stdin"; fail=1; }

# experts_choose with capacity_factor: C = round(1.0*2/2) = 1.
ec='{"router":"experts_choose","capacity_factor":1.0,"logits":[[[1,0],[0,1]]]}'
out=$(echo "$ec" | "$bin" route) || { echo "FAIL: EC exit status"; fail=1; }
[[ "$out" == *'"capacity":1'* && "$out" == *'"dispatch":[[[[1],[0]],[[0],[1]]]]'* ]] || { echo "FAIL: EC output $out"; fail=1; }

expect_error() {  # name, input, text the message must contain
  local err rc
  err=$(echo "$2" | "$bin" route 2>&1 >/dev/null); rc=$?
  if [[ $rc -ne 2 ]]; then echo "FAIL: $1: exit $rc, want 2"; fail=1; fi
  if [[ $(echo "$err" | wc -l) -ne 1 || "$err" != *"$3"* ]]; then echo "FAIL: $1: stderr '$err'"; fail=1; fi
}
expect_error "invalid json" '{"router":' "invalid JSON"
expect_error "ragged" '{"router":"tokens_choose","logits":[[[1,2],[1]]]}' "ragged"
expect_error "empty" '{"router":"tokens_choose","logits":[]}' "logits"
expect_error "unknown router" '{"router":"top3","logits":[[[1,2]]]}' "router"
expect_error "unknown key" '{"router":"tokens_choose","logits":[[[1,2]]],"kk":1}' "unknown key 'kk'"
expect_error "k > E" '{"router":"tokens_choose","k":3,"logits":[[[1,2]]]}' "k:"
expect_error "C > T" '{"router":"experts_choose","capacity":2,"logits":[[[1,2]]]}' "exceeds tokens per group"
expect_error "non-finite" '{"router":"tokens_choose","logits":[[[1,1e999]]]}' "invalid JSON"
expect_error "float overflow" '{"router":"tokens_choose","logits":[[[1,1e300]]]}' "non-finite"
expect_error "non-number" '{"router":"tokens_choose","logits":[[[1,"x"]]]}' "non-number"
expect_error "negative capacity" '{"router":"tokens_choose","capacity":-1,"logits":[[[1,2]]]}' "capacity"

if [[ $fail -eq 0 ]]; then echo "cli route: all checks passed"; fi
exit $fail
