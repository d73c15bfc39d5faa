#!/usr/bin/env bash
# End-to-end test of `sparsemoe bench model` on the tiny preset: the JSON report carries both
# measurements with their GEMM rates (GFLOP/s, % of FMA peak, % of the library), the parameter
# count and the speed-up against the baseline measured in the same run; bad presets, overrides and modes exit with status 2 and one line naming the problem;
# SPARSEMOE_SIMD forces the vector kernels' level, which the report names. `bench moe` reports
# both forward+backward figures.
set -u
bin=$1
fail=0
fast=(--batch 1 --min-time 0 --min-runs 1)

out=$("$bin" bench model --preset tiny,tiny --baseline tiny "${fast[@]}" --json) ||
  { echo "FAIL: exit status"; fail=1; }
for want in '"preset": "tiny"' '"params": ' '"inference_tokens_per_s"' \
            '"train_tokens_per_s"' '"train_speedup_vs_tiny"' '"sequence_length": 32' '"simd": ' \
            '"train_gflops"' '"inference_percent_of_fma_peak"' '"train_percent_of_library_gemm"' \
            '"library_gemm_gflops"' '"fma_peak_gflops"'; do
  [[ "$out" == *"$want"* ]] || { echo "FAIL: output lacks $want"; fail=1; }
done
out=$("$bin" bench model --preset tiny --set max_sequence_length=16 --set mixing_mechanism=hartley \
      --mode infer "${fast[@]}" --json) || { echo "FAIL: --set exit status"; fail=1; }
[[ "$out" == *'"sequence_length": 16'* && "$out" != *train_tokens* ]] ||
  { echo "FAIL: --set/--mode output $out"; fail=1; }

expect_error() {  # expected message fragment, then the arguments
  local want=$1; shift
  err=$("$bin" bench model "${fast[@]}" "$@" 2>&1 >/dev/null); status=$?
  [[ $status -eq 2 && "$err" == *"$want"* ]] ||
    { echo "FAIL: '$*' gave status $status, stderr: $err"; fail=1; }
}
expect_error "unknown; the presets are" --preset no_such_model
expect_error "unknown key 'hidden_sise'" --preset tiny --set hidden_sise=8
expect_error "expected key=value" --preset tiny --set hidden_size
expect_error "mode" --preset tiny --mode fast
# The vector kernels' level can be forced down to baseline x86-64, and is reported; a bad name is
# an error naming the variable.
out=$(SPARSEMOE_SIMD=baseline "$bin" bench model --preset tiny --mode infer "${fast[@]}" --json) ||
  { echo "FAIL: SPARSEMOE_SIMD=baseline exit status"; fail=1; }
[[ "$out" == *'"simd": "baseline (x86-64)"'* ]] || { echo "FAIL: simd not reported: $out"; fail=1; }
# ... and the library (oneDNN) is held to the forced level too, unless ONEDNN_MAX_CPU_ISA says
# otherwise; the report names the library's instruction set.
out=$(env -u ONEDNN_MAX_CPU_ISA -u DNNL_MAX_CPU_ISA SPARSEMOE_SIMD=avx2 "$bin" bench model \
      --preset tiny --mode infer "${fast[@]}" --json 2>&1)
if [[ "$out" == *"this CPU supports at most"* ]]; then
  echo "note: no AVX2 level on this CPU, the library's cap not checked"
elif [[ "$out" == *'"blas": "onednn"'* ]]; then
  [[ "$out" == *'"blas_isa": "avx2"'* ]] || { echo "FAIL: oneDNN not held to AVX2: $out"; fail=1; }
  out=$(env -u ONEDNN_MAX_CPU_ISA -u DNNL_MAX_CPU_ISA SPARSEMOE_SIMD=baseline "$bin" bench model \
        --preset tiny --mode infer "${fast[@]}" --json)
  [[ "$out" == *'"blas_isa": "sse41"'* ]] || { echo "FAIL: oneDNN not held to SSE4.1: $out"; fail=1; }
else
  [[ "$out" == *'"blas_isa": "'* ]] || { echo "FAIL: blas_isa not reported: $out"; fail=1; }
fi
err=$(SPARSEMOE_SIMD=sse9 "$bin" bench model --preset tiny "${fast[@]}" 2>&1 >/dev/null); status=$?
[[ $status -eq 2 && "$err" == *"SPARSEMOE_SIMD: expected baseline, avx2 or avx512, got 'sse9'"* ]] ||
  { echo "FAIL: SPARSEMOE_SIMD=sse9 gave status $status, stderr: $err"; fail=1; }
# `bench moe` reports the forward+backward with gradients added and with gradients written.
out=$("$bin" bench moe --hidden 16 --d-ff 32 --experts 4 --tokens-per-group 16 --batch 1 \
      --router tokens_choose --k 1 --min-time 0 --json) || { echo "FAIL: bench moe exit status"; fail=1; }
for want in '"forward_backward_ms"' '"forward_backward_written_ms"' '"inference_ms"'; do
  [[ "$out" == *"$want"* ]] || { echo "FAIL: bench moe output lacks $want"; fail=1; }
done
# `bench cases` times the harness's registered cases; an unmatched filter is an error.
out=$("$bin" bench cases --filter moe/top2_glu --min-time 0 --json) ||
  { echo "FAIL: bench cases exit status"; fail=1; }
[[ "$out" == *'"case": "moe/top2_glu"'* && "$out" == *'"forward_backward_ms"'* ]] ||
  { echo "FAIL: bench cases output $out"; fail=1; }
err=$("$bin" bench cases --filter no_such_case 2>&1 >/dev/null); status=$?
[[ $status -eq 2 && "$err" == *"no case name contains 'no_such_case'"* ]] ||
  { echo "FAIL: bench cases --filter no_such_case gave status $status, stderr: $err"; fail=1; }
# Idle OpenMP threads spin only briefly (GOMP_SPINCOUNT 1000) unless the user set a policy.
shown=$(env -u OMP_WAIT_POLICY -u GOMP_SPINCOUNT OMP_DISPLAY_ENV=verbose "$bin" route /dev/null 2>&1)
[[ "$(echo "$shown" | grep GOMP_SPINCOUNT | tail -1)" == *"'1000'"* ]] ||
  { echo "FAIL: the tool's default GOMP_SPINCOUNT: $shown"; fail=1; }
shown=$(env -u OMP_WAIT_POLICY GOMP_SPINCOUNT=7 OMP_DISPLAY_ENV=verbose "$bin" route /dev/null 2>&1)
[[ "$(echo "$shown" | grep GOMP_SPINCOUNT | tail -1)" == *"'7'"* ]] ||
  { echo "FAIL: a user's GOMP_SPINCOUNT was not kept: $shown"; fail=1; }
exit $fail
