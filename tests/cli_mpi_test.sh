#!/usr/bin/env bash
# The command-line tool under mpirun (2 ranks): `bench moe` runs the MoE layer with its experts
# split over the ranks and reports exchange, compute, bytes per token and scaling efficiency from
# rank 0 only; any other command refuses to run on many processes, and the job ends with status
# 2 and the failing rank named instead of hanging. Usage: cli_mpi_test.sh MPIRUN SPARSEMOE
set -u
mpirun=$1
bin=$2
fail=0
run() { timeout 120 "$mpirun" -np 2 --oversubscribe "$@"; }

out=$(run "$bin" bench moe --hidden 32 --d-ff 64 --experts 4 --tokens-per-group 64 --batch 2 \
        --router tokens_choose --k 2 --runs 2 --json 2>&1) || { echo "FAIL: bench moe exit status"; fail=1; }
for want in '"processes": 2' '"backend": "mpi"' '"scaling_efficiency"' '"exchange_ms"' \
            '"bytes_sent_per_token"' '"experts_owned": 2' '"tokens_per_rank": 128'; do
  [[ "$out" == *"$want"* ]] || { echo "FAIL: bench moe output lacks $want"; fail=1; }
done
[[ $(grep -c '"results"' <<< "$out") -eq 1 ]] || { echo "FAIL: expected one report (rank 0's)"; fail=1; }

err=$(run "$bin" route < /dev/null 2>&1); status=$?
[[ $status -eq 2 ]] || { echo "FAIL: route under mpirun: exit status $status, expected 2"; fail=1; }
[[ "$err" == *"rank 0 failed"*"only \`bench moe\` runs on many processes"* ]] ||
  { echo "FAIL: route under mpirun: message was: $err"; fail=1; }

[[ $fail -eq 0 ]] && echo "cli mpi: all checks passed"
exit $fail
