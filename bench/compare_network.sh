#!/usr/bin/env bash
# The whole-network comparison with the best-configured PyTorch (bench/peer_env.sh). (Preloading
# jemalloc, which PyTorch's CPU tuning guides suggest, made PyTorch 1.6-6.8x slower on an earlier
# machine: docs/performance.md.) Extra arguments go to bench/torch_network_peer.py.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/peer_env.sh
best_peer bench/torch_network_peer.py "$@"
