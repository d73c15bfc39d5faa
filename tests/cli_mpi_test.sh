#!/usr/bin/env bash
# The command-line tool under mpirun (2 ranks): `bench moe` runs the MoE layer with its experts
# split over the ranks and reports exchange, compute, bytes per token and scaling efficiency from
# rank 0 only; `bench model` and `bench comm` report theirs; `train` on 1, 2 and 4 processes
# writes the same bytes, and bad input on one rank is refused by all before anything is written;
# any other command refuses to run on many processes, and the job ends with status 2 and the
# failing rank named instead of hanging.
# Usage: cli_mpi_test.sh MPIRUN SPARSEMOE
set -u
mpirun=$1
bin=$(realpath "$2")
fail=0
run() { timeout 120 "$mpirun" -np 2 --oversubscribe "$@"; }

out=$(run "$bin" bench moe --hidden 32 --d-ff 64 --experts 4 --tokens-per-group 64 --batch 2 \
        --router tokens_choose --k 2 --runs 2 --json 2>&1) || { echo "FAIL: bench moe exit status"; fail=1; }
for want in '"processes": 2' '"backend": "mpi"' '"scaling_efficiency"' '"exchange_ms"' \
            '"bytes_sent_per_token"' '"experts_owned": 2' '"tokens_per_rank": 128' '"return_chunks": 4'; do
  [[ "$out" == *"$want"* ]] || { echo "FAIL: bench moe output lacks $want"; fail=1; }
done
[[ $(grep -c '"results"' <<< "$out") -eq 1 ]] || { echo "FAIL: expected one report (rank 0's)"; fail=1; }

out=$(run "$bin" bench model --preset tiny --batch 2 --min-runs 2 --json 2>&1) ||
  { echo "FAIL: bench model exit status"; fail=1; }
for want in '"processes": 2' '"moe_layers"' '"exchange_ms"' '"expert_compute_ms"' \
            '"bytes_sent_per_token"' '"scaling_efficiency"' '"gradient_sum_ms"' '"experts_owned": 2'; do
  [[ "$out" == *"$want"* ]] || { echo "FAIL: bench model output lacks $want"; fail=1; }
done
[[ $(grep -c '"results"' <<< "$out") -eq 1 ]] || { echo "FAIL: bench model: expected one report"; fail=1; }

out=$(run "$bin" bench comm --runs 2 --json 2>&1) || { echo "FAIL: bench comm exit status"; fail=1; }
for want in '"latency_us"' '"bandwidth_gbps"' '"alltoallv"' '"rows_per_rank": 16384' '"processes": 2'; do
  [[ "$out" == *"$want"* ]] || { echo "FAIL: bench comm output lacks $want"; fail=1; }
done

err=$(run "$bin" route < /dev/null 2>&1); status=$?
[[ $status -eq 2 ]] || { echo "FAIL: route under mpirun: exit status $status, expected 2"; fail=1; }
[[ "$err" == *"rank 0 failed"*"only \`train\`, \`bench moe\`, \`bench model\` and \`bench comm\` run on many processes"* ]] ||
  { echo "FAIL: route under mpirun: message was: $err"; fail=1; }

# Training on a small label<TAB>text corpus with the wordnet_tiny model, units=4: 1, 2 and 4
# processes write byte-identical checkpoints and the same metrics (less their timing fields) and
# results; so does a tokens-choose dropless variant on 1 and 2. Rank 0 alone prints the report.
# (tests/cli_mpi_wordnet_test.sh does the same on the WordNet corpus.)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
root=$(cd "$(dirname "$0")/.." && pwd)
source "$(dirname "$0")/cli_mpi_lib.sh"
mkdir -p "$tmp/h0" "$tmp/h1"
synthetic_corpus > "$tmp/h0/corpus.tsv"
tsv=(train --config "$root/configs/wordnet_tiny.json" --set data.format=tsv --set data.path=corpus.tsv
     --set tokenizer.vocab_size=60 --set units=4 --set pretrain.steps=3 --set finetune.steps=3
     --set pretrain.optimizer.warmup_steps=1 --set finetune.optimizer.warmup_steps=1
     --set eval_batches=1 --set log_every=1 --threads 1)
dropless=(--set model.moe.router.type=tokens_choose --set model.moe.dropless=true
          --set model.moe.experts.inner_dropout=0.1)
in_h0() { (cd "$tmp/h0" && "$@"); }
in_h0 timeout 120 "$bin" "${tsv[@]}" --out p1 > /dev/null 2>&1 ||
  { echo "FAIL: train in one process"; fail=1; }
for np in 2 4; do
  out=$(in_h0 timeout 180 "$mpirun" -np $np --oversubscribe "$bin" "${tsv[@]}" --out p$np 2>&1) ||
    { echo "FAIL: train on $np processes: $out"; fail=1; }
  same_run "$tmp/h0/p$np" "$tmp/h0/p1" "on $np processes"
  [[ $(grep -c "^test accuracy" <<< "$out") -eq 1 ]] ||
    { echo "FAIL: train on $np processes: expected one report (rank 0's), got: $out"; fail=1; }
done
in_h0 timeout 120 "$bin" "${tsv[@]}" "${dropless[@]}" --out d1 > /dev/null 2>&1 ||
  { echo "FAIL: dropless train in one process"; fail=1; }
in_h0 timeout 180 "$mpirun" -np 2 --oversubscribe "$bin" "${tsv[@]}" "${dropless[@]}" --out d2 \
  > /dev/null 2>&1 || { echo "FAIL: dropless train on 2 processes"; fail=1; }
same_run "$tmp/h0/d2" "$tmp/h0/d1" "dropless on 2 processes"
# units=1 cannot be shared by 2 processes: refused before any work, every rank agreeing.
err=$(run "$bin" train --config "$root/configs/wordnet_tiny.json" --out "$tmp/bad" 2>&1); status=$?
[[ $status -eq 2 && "$err" == *"units: the 2 processes must each take the same number"* ]] ||
  { echo "FAIL: units=1 on 2 processes: status $status: $err"; fail=1; }
[[ ! -e "$tmp/bad" ]] || { echo "FAIL: a refused run created its directory"; fail=1; }

# Bad input seen by one rank: the two ranks run in different directories (as on two hosts) and
# the corpus, a relative path, exists only in rank 0's. Every rank checks its config and corpus
# before rank 0 writes anything: the job exits 2 with rank 1's message once and no run directory.
# Then a run stopped at step 2 cannot resume while rank 1 lacks the corpus (its checkpoint left
# as it was), and resumes once it is back, ending with one process's bytes.
two_hosts() {  # rank 0 in h0, rank 1 in h1 (which has no corpus yet)
  timeout 120 "$mpirun" --oversubscribe -np 1 -wdir "$tmp/h0" "$bin" "$@" : \
    -np 1 -wdir "$tmp/h1" "$bin" "$@"
}
err=$(two_hosts "${tsv[@]}" --out run 2>&1); status=$?
[[ $status -eq 2 && $(grep -c "rank 1: cannot open 'corpus.tsv'" <<< "$err") -eq 1 ]] ||
  { echo "FAIL: a corpus missing on rank 1: status $status: $err"; fail=1; }
[[ ! -e "$tmp/h0/run" ]] || { echo "FAIL: rank 0 wrote a run although rank 1 could not start"; fail=1; }
cp "$tmp/h0/corpus.tsv" "$tmp/h1/"
two_hosts "${tsv[@]}" --out run --stop-after 2 > /dev/null 2>&1 ||
  { echo "FAIL: a run stopped at step 2 on two directories"; fail=1; }
cp "$tmp/h0/run/checkpoint.safetensors" "$tmp/step2.safetensors"
rm "$tmp/h1/corpus.tsv"
err=$(two_hosts train --resume --out run --threads 1 2>&1); status=$?
[[ $status -eq 2 && "$err" == *"rank 1: cannot open 'corpus.tsv'"* ]] ||
  { echo "FAIL: resume with the corpus missing on rank 1: status $status: $err"; fail=1; }
cmp -s "$tmp/h0/run/checkpoint.safetensors" "$tmp/step2.safetensors" ||
  { echo "FAIL: a refused resume changed the checkpoint"; fail=1; }
cp "$tmp/h0/corpus.tsv" "$tmp/h1/"
two_hosts train --resume --out run --threads 1 > /dev/null 2>&1 ||
  { echo "FAIL: resume once the corpus is back"; fail=1; }
cmp -s "$tmp/h0/run/checkpoint.safetensors" "$tmp/h0/p1/checkpoint.safetensors" ||
  { echo "FAIL: stopped, refused, resumed on 2 processes: the checkpoint differs from one process's"; fail=1; }

# A rank killed mid-run (SIGKILL): the launcher ends the others and the job exits non-zero within
# a bounded time, never a hang.
start=$(date +%s)
timeout 120 "$mpirun" -np 2 --oversubscribe "$bin" bench moe --hidden 64 --d-ff 128 --experts 4 \
    --tokens-per-group 128 --batch 4 --router tokens_choose --k 1 --runs 100000 > /dev/null 2>&1 &
job=$!  # timeout -> mpirun -> the two ranks
ranks=""
for _ in $(seq 100); do  # wait for both ranks to be running
  sleep 0.1
  launcher=$(pgrep -P $job || true)
  [[ -n "$launcher" ]] && ranks=$(pgrep -P "$launcher" || true)
  [[ $(wc -w <<< "$ranks") -eq 2 ]] && break
done
[[ $(wc -w <<< "$ranks") -eq 2 ]] || { echo "FAIL: the two rank processes were not found"; fail=1; }
sleep 1
victim=$(head -1 <<< "$ranks")
[[ -n "$victim" ]] && kill -9 "$victim"
wait $job; status=$?
elapsed=$(($(date +%s) - start))
[[ $status -ne 0 ]] || { echo "FAIL: a killed rank left exit status 0"; fail=1; }
((elapsed < 60)) || { echo "FAIL: the job took ${elapsed}s to end after a rank was killed"; fail=1; }
alive() { local st; st=$(ps -o stat= -p "$1" 2>/dev/null); [[ -n "$st" && "$st" != Z* ]]; }
for pid in $ranks; do  # the surviving rank is ended too (within 10 s of the job's end)
  for _ in $(seq 100); do alive "$pid" || break; sleep 0.1; done
  alive "$pid" && { echo "FAIL: rank process $pid outlived the job"; kill -9 "$pid"; fail=1; }
done

[[ $fail -eq 0 ]] && echo "cli mpi: all checks passed"
exit $fail
