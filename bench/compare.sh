#!/usr/bin/env bash
# Runs the PyTorch comparison twice in one go: with the environment as it is, and with the
# best-configured peer (bench/peer_env.sh). Extra arguments go to bench/torch_peer.py.
# SPARSEMOE_MACHINE=avx2 holds the best-configured half to AVX2 on both sides (bench/peer_env.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/peer_env.sh
echo "== environment as it is (OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-unset})"
/usr/bin/python3 bench/torch_peer.py "$@"
best_peer bench/torch_peer.py "$@"
