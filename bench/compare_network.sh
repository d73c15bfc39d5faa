#!/usr/bin/env bash
# The whole-network comparison with the best-configured PyTorch: OPENBLAS_CORETYPE unset and
# PyTorch on the OpenMP OpenBLAS. (Preloading jemalloc, which PyTorch's CPU tuning guides
# suggest, made PyTorch 1.6-6.8x slower on this machine: docs/performance.md.) Our engine runs as
# a subprocess in the same environment. Extra arguments go to bench/torch_network_peer.py.
set -euo pipefail
cd "$(dirname "$0")/.."
env -u OPENBLAS_CORETYPE LD_LIBRARY_PATH=/usr/lib/x86_64-linux-gnu/openblas-openmp \
  /usr/bin/python3 bench/torch_network_peer.py "$@"
