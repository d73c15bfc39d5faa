#!/usr/bin/env bash
# Results do not depend on the instruction set: the golden recorder (tests/golden/record.cc: every
# MoE configuration the tests use, lingvo's gates, the tiny Sparse Mixer with each router, two
# training steps each at 1 and 2 threads, hashed bit for bit) prints the same bytes with the
# engine's best SIMD level and with the AVX2 path forced, the BLAS libraries capped at AVX2 too
# (ONEDNN_MAX_CPU_ISA, OPENBLAS_CORETYPE), as on an AVX2-only CPU. Until the router's GEMMs left
# the library, 54 of the 54 MoE cases differed here on an AVX-512 machine.
#   tests/isa_invariance_test.sh RECORDER
set -euo pipefail
recorder=$1
best=$("$recorder")
if ! avx2=$(SPARSEMOE_SIMD=avx2 ONEDNN_MAX_CPU_ISA=AVX2 OPENBLAS_CORETYPE=Haswell "$recorder" 2>&1); then
  echo "this CPU has no AVX2 level: nothing to compare ($avx2)"
  exit 77
fi
if [[ "$best" != "$avx2" ]]; then
  echo "FAIL: the recorder's hashes differ between the best level and AVX2 forced:"
  diff <(echo "$best") <(echo "$avx2") | head -40
  exit 1
fi
echo "ok: $(grep -c '": "' <<<"$best") hashes and metrics equal at the best level and at AVX2"
