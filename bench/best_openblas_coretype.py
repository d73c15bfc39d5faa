#!/usr/bin/python3
"""Picks the OpenBLAS kernel family (OPENBLAS_CORETYPE) that makes PyTorch's matmul fastest here.

OpenBLAS chooses its kernels from the CPU's model number, and its choice is not always its best:
on a 5th-generation Xeon (Emerald Rapids, family 6 model 207), OpenBLAS 0.3.21 (Debian 12) left
to itself reports "Cooperlake" and runs single-precision GEMMs at about 25-32 GFLOP/s per core,
while the same library with OPENBLAS_CORETYPE=SkylakeX (or Cooperlake, set by hand) reaches 135-147.
A best-configured peer must not lose to such a mistake, so the
comparison scripts ask this probe first. Each candidate runs in its own process (a kernel family
the CPU cannot run dies there with SIGILL and is skipped); every candidate's rate goes to stderr,
and the winner's name to stdout: empty when OpenBLAS's own choice (the variable unset) wins.
Run it with the environment the peer will have (LD_LIBRARY_PATH selecting the OpenBLAS).
BEST_CORETYPE_CANDIDATES (space-separated family names) limits the candidates, e.g. to the AVX2
families "Haswell Zen" when an AVX-512 machine stands in for an AVX2 one (bench/peer_env.sh); then
the fastest of those is named even when it is not clearly faster than another."""
import os
import subprocess
import sys

CANDIDATES = ["", "SkylakeX", "Cooperlake", "Haswell", "Zen", "SandyBridge"]

# One thread, the expert shapes (M = 256 rows, K x N = 512 x 2048 and back), best of 5 timings of
# 10 calls each, in GFLOP/s. Threads would only add noise to a per-kernel ranking.
PROBE = r"""
import time, torch
torch.set_num_threads(1)
best = 0.0
for m, k, n in ((256, 512, 2048), (256, 2048, 512)):
    a, b = torch.randn(m, k), torch.randn(k, n)
    for _ in range(3):
        a @ b
    rate = 0.0
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(10):
            a @ b
        rate = max(rate, 20 * m * k * n / (time.perf_counter() - t) / 1e9)
    best += rate / 2
print(best)
"""


def rate(coretype):
    env = dict(os.environ)
    env.pop("OPENBLAS_CORETYPE", None)
    if coretype:
        env["OPENBLAS_CORETYPE"] = coretype
    try:
        out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True,
                             text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return None
    if out.returncode != 0:
        return None
    return float(out.stdout.strip())


def main():
    only = os.environ.get("BEST_CORETYPE_CANDIDATES", "").split()
    candidates = only or CANDIDATES
    results = [(c, rate(c)) for c in candidates]
    for c, r in results:
        shown = "%.1f GFLOP/s" % r if r is not None else "unusable here"
        print("openblas coretype %-11s %s" % (c or "(unset)", shown), file=sys.stderr)
    usable = [(r, c) for c, r in results if r is not None]
    if not usable:
        sys.exit("best_openblas_coretype: no candidate ran; is python3-torch installed?")
    best_rate, best = max(usable)
    if only:
        print(best)
        return
    unset_rate = results[0][1]
    # Keep OpenBLAS's own choice unless another family is clearly (10%) faster: the probe is
    # noisy, and an unforced peer is the simpler one to reproduce.
    if unset_rate is not None and best_rate < 1.1 * unset_rate:
        best = ""
    print(best)


if __name__ == "__main__":
    main()
