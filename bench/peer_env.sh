# Sourced by the comparison scripts: `best_peer SCRIPT ARGS...` runs a PyTorch peer script as the
# best-configured peer: PyTorch on the OpenMP OpenBLAS, with the OpenBLAS kernel family that is
# fastest on this CPU (bench/best_openblas_coretype.py: OpenBLAS's own choice unless another is
# clearly faster, which it is not on every CPU). Our engine runs as a subprocess of the peer in the
# same environment.
best_peer() {
  local openmp=/usr/lib/x86_64-linux-gnu/openblas-openmp coretype
  coretype=$(env -u OPENBLAS_CORETYPE LD_LIBRARY_PATH=$openmp /usr/bin/python3 \
    bench/best_openblas_coretype.py)
  echo "== best-configured peer: OPENBLAS_CORETYPE=${coretype:-unset}, LD_LIBRARY_PATH=openblas-openmp"
  if [[ -n "$coretype" ]]; then
    OPENBLAS_CORETYPE=$coretype LD_LIBRARY_PATH=$openmp /usr/bin/python3 "$@"
  else
    env -u OPENBLAS_CORETYPE LD_LIBRARY_PATH=$openmp /usr/bin/python3 "$@"
  fi
}
