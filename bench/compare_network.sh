#!/usr/bin/env bash
# The whole-network comparison with the best-configured PyTorch: OPENBLAS_CORETYPE unset,
# PyTorch on the OpenMP OpenBLAS, and jemalloc preloaded (PyTorch's CPU tuning guides recommend
# it: with glibc malloc, every activation of 32 MiB or more is a fresh mmap whose pages fault in
# on each use). Our engine runs as a subprocess in the same environment. Extra arguments go to
# bench/torch_network_peer.py.
set -euo pipefail
cd "$(dirname "$0")/.."
jemalloc=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2
[[ -f $jemalloc ]] || { echo "compare_network.sh: $jemalloc missing (scripts/setup.sh --peer)" >&2; exit 2; }
env -u OPENBLAS_CORETYPE LD_LIBRARY_PATH=/usr/lib/x86_64-linux-gnu/openblas-openmp \
  LD_PRELOAD=$jemalloc /usr/bin/python3 bench/torch_network_peer.py "$@"
