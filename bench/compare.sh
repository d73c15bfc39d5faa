#!/usr/bin/env bash
# Runs the PyTorch comparison twice in one go: with the environment as it is, and with the
# best-configured peer (OPENBLAS_CORETYPE unset for both sides, PyTorch on the OpenMP OpenBLAS).
# Extra arguments go to bench/torch_peer.py.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== environment as it is (OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-unset})"
/usr/bin/python3 bench/torch_peer.py "$@"
echo "== best-configured peer: OPENBLAS_CORETYPE unset, LD_LIBRARY_PATH=openblas-openmp"
env -u OPENBLAS_CORETYPE LD_LIBRARY_PATH=/usr/lib/x86_64-linux-gnu/openblas-openmp \
  /usr/bin/python3 bench/torch_peer.py "$@"
