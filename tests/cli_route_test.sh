#!/usr/bin/env bash
# End-to-end test of `sparsemoe route`: the D1 worked example through the CLI, and the error
# contract (exit status 2, one line on stderr naming the problem) for each kind of bad input;
# the lingvo top2 gate (D2, paddings, a seeded random policy).
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

# D2 (spec peer case): lingvo top2, policy all, c_dim 2, legacy; t3 is dropped.
d2='{"router":"top2","capacity":2,"logits":[[[-0.5108256,-1.2039728,-2.3025851],[-1.6094379,-0.3566749,-2.3025851],[-0.6931472,-0.9162907,-2.3025851],[-0.2231436,-1.89712,-2.9957323]]]}'
out=$(echo "$d2" | "$bin" route) || { echo "FAIL: D2 exit status"; fail=1; }
for want in '"capacity":2' '"aux_loss":1.47187' '"over_capacity_1_ratio":0.25' '"over_capacity_2_ratio":0.75' \
            '"dispatch":[[[[1,0],[0,1],[0,0]],[[0,0],[1,0],[0,0]],[[0,1],[0,0],[0,0]],[[0,0],[0,0],[0,0]]]]'; do
  [[ "$out" == *"$want"* ]] || { echo "FAIL: D2 output lacks $want"; fail=1; }
done
# Padding tokens are never dispatched; a seed reproduces the random policy.
pad='{"router":"top2","capacity":4,"paddings":[[0,1,0,1]],"second_expert_policy":"random","second_expert_threshold":0.5,"seed":7,"logits":[[[1,0,2],[0,3,1],[2,2,0],[1,1,1]]]}'
out=$(echo "$pad" | "$bin" route) || { echo "FAIL: paddings exit status"; fail=1; }
[[ "$(echo "$pad" | "$bin" route)" == "$out" ]] || { echo "FAIL: random policy not reproducible"; fail=1; }
/usr/bin/env python3 - "$out" <<'PY' || fail=1
import json, sys
d = json.loads(sys.argv[1])
for t in (1, 3):
    if any(v for e in d["dispatch"][0][t] for v in e):
        sys.exit(f"FAIL: padding token {t} dispatched")
PY

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
expect_error "k > E" '{"router":"tokens_choose","k":3,"logits":[[[1,2]]]}' "num_selected_experts: expected in [1, num_experts=2], got 3"
expect_error "C > T" '{"router":"experts_choose","capacity":2,"logits":[[[1,2]]]}' "exceeds tokens_per_group T=1"
expect_error "non-finite" '{"router":"tokens_choose","logits":[[[1,1e999]]]}' "invalid JSON"
expect_error "float overflow" '{"router":"tokens_choose","logits":[[[1,1e300]]]}' "non-finite"
expect_error "non-number" '{"router":"tokens_choose","logits":[[[1,"x"]]]}' "non-number"
expect_error "negative capacity" '{"router":"tokens_choose","capacity":-1,"logits":[[[1,2]]]}' "capacity"
expect_error "top2 policy" '{"router":"top2","second_expert_policy":"best","logits":[[[1,2]]]}' "second_expert_policy"
expect_error "top2 paddings shape" '{"router":"top2","paddings":[[0,0]],"logits":[[[1,2]]]}' "paddings"
expect_error "top2 paddings value" '{"router":"top2","paddings":[[0.5]],"logits":[[[1,2]]]}' "paddings"
expect_error "top2 k" '{"router":"top2","k":3,"logits":[[[1,2,3]]]}' "top2 always selects 2 experts"
expect_error "top2 option on tokens_choose" '{"router":"tokens_choose","second_expert_policy":"random","logits":[[[1,2]]]}' "second_expert_policy applies to router type 'top2' only"
expect_error "seed on tokens_choose" '{"router":"tokens_choose","seed":1,"logits":[[[1,2]]]}' "seed: router 'tokens_choose' draws nothing"
expect_error "experts_choose k" '{"router":"experts_choose","k":2,"logits":[[[1,2]]]}' "num_selected_experts applies to tokens_choose only"
expect_error "top2 expert_padding_idx" '{"router":"top2","expert_padding_idx":[5],"logits":[[[1,2]]]}' "expert_padding_idx"

if [[ $fail -eq 0 ]]; then echo "cli route: all checks passed"; fi
exit $fail
