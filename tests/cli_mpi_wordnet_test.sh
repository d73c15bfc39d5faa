#!/usr/bin/env bash
# The issue's own check on the wordnet_tiny config (shortened to 4 + 4 steps, units=4): `train` on
# 1, 2 and 4 processes writes byte-identical checkpoints, the same metrics (less their timing
# fields) and results. Heavier than cli_mpi_test.sh (SentencePiece on WordNet, the whole test
# split), so the sanitizer stage of scripts/test.sh leaves it to the release stage.
# Usage: cli_mpi_wordnet_test.sh MPIRUN SPARSEMOE
set -u
mpirun=$1
bin=$(realpath "$2")
fail=0
root=$(cd "$(dirname "$0")/.." && pwd)
source "$(dirname "$0")/cli_mpi_lib.sh"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
short=(--config "$root/configs/wordnet_tiny.json" --set units=4 --set pretrain.steps=4
       --set finetune.steps=4 --set pretrain.optimizer.warmup_steps=2
       --set finetune.optimizer.warmup_steps=2 --set eval_every=2 --set eval_batches=2
       --set log_every=1 --threads 1)
timeout 300 "$bin" train "${short[@]}" --out "$tmp/p1" > /dev/null 2>&1 ||
  { echo "FAIL: train in one process"; fail=1; }
for np in 2 4; do
  out=$(timeout 300 "$mpirun" -np $np --oversubscribe "$bin" train "${short[@]}" --out "$tmp/p$np" \
          2>&1) || { echo "FAIL: train on $np processes: $out"; fail=1; }
  same_run "$tmp/p$np" "$tmp/p1" "wordnet_tiny on $np processes"
done
[[ $fail -eq 0 ]] && echo "cli mpi wordnet: 1, 2 and 4 processes wrote the same bytes"
exit $fail
