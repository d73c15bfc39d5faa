# Sourced by the comparison scripts: `best_peer SCRIPT ARGS...` runs a PyTorch peer script as the
# best-configured peer: PyTorch on the OpenMP OpenBLAS, with the OpenBLAS kernel family that is
# fastest on this CPU (bench/best_openblas_coretype.py: OpenBLAS's own choice unless another is
# clearly faster, which it is not on every CPU). Our engine runs as a subprocess of the peer in the
# same environment.
#
# SPARSEMOE_MACHINE=avx2 stands in for an AVX2-only machine (a Zen 3) on an AVX-512 one: both sides
# are held to AVX2: our engine (SPARSEMOE_SIMD=avx2, oneDNN's ISA cap) and the peer (OpenBLAS's
# AVX2 kernel families only, Haswell or Zen, whichever is faster; oneDNN's cap for PyTorch's own
# oneDNN; PyTorch's ATen kernels are AVX2 in Debian's build anyway). Forcing only our side measures
# our AVX2 code against the peer's AVX-512 kernels, a machine that does not exist.
best_peer() {
  local openmp=/usr/lib/x86_64-linux-gnu/openblas-openmp coretype
  if [[ "${SPARSEMOE_MACHINE:-}" == avx2 ]]; then
    export SPARSEMOE_SIMD=avx2 ONEDNN_MAX_CPU_ISA=AVX2 DNNL_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2
    export BEST_CORETYPE_CANDIDATES="Haswell Zen"
    echo "== an AVX2 machine: both sides held to AVX2 (SPARSEMOE_SIMD=avx2, ONEDNN_MAX_CPU_ISA=AVX2," \
      "OpenBLAS families Haswell/Zen)"
  elif [[ -n "${SPARSEMOE_MACHINE:-}" ]]; then
    echo "best_peer: SPARSEMOE_MACHINE must be empty or 'avx2', not '$SPARSEMOE_MACHINE'" >&2
    return 2
  fi
  coretype=$(env -u OPENBLAS_CORETYPE LD_LIBRARY_PATH=$openmp /usr/bin/python3 \
    bench/best_openblas_coretype.py)
  echo "== best-configured peer: OPENBLAS_CORETYPE=${coretype:-unset}, LD_LIBRARY_PATH=openblas-openmp"
  if [[ -n "$coretype" ]]; then
    OPENBLAS_CORETYPE=$coretype LD_LIBRARY_PATH=$openmp /usr/bin/python3 "$@"
  else
    env -u OPENBLAS_CORETYPE LD_LIBRARY_PATH=$openmp /usr/bin/python3 "$@"
  fi
}
