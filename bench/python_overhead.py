#!/usr/bin/python3
"""What calling the engine from Python costs (issue 15, item 5): the MoE layer's forward and
forward+backward through `sparsemoe.MoeLayer` (numpy) and `sparsemoe.torch.MoeLayer` against
`sparsemoe bench moe` running the same configuration in C++, in the same run, one after the other.
The overhead is the difference of the medians, also given as a percentage. In the same run, the
torch module against PyTorch's own sparse MoE layer (bench/torch_peer.py's gather / per-expert
matmul / index_add formulation, the same shapes and router) as a speed ratio.

    PYTHONPATH=build/python OMP_NUM_THREADS=1 /usr/bin/python3 bench/python_overhead.py --threads 1

H 512, F 2048, E 16, GELU-tanh experts, tokens-choose k = 1 (as `bench moe`): one token
(dropless), one sequence of 128 tokens, and 8 x 512 = 4096 tokens (capacity factor 1); and one
token through a layer of H 8, F 8, E 2, where the engine's work is negligible, which shows the
fixed cost of a call."""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

import sparsemoe
import sparsemoe.torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import torch_peer  # noqa: E402  (the PyTorch formulation of bench/compare.sh)
# name, B, T, dropless, H, F, E
SCENARIOS = [("1 token, H 8, F 8, E 2", 1, 1, True, 8, 8, 2),
             ("1 token", 1, 1, True, 512, 2048, 16), ("128 tokens", 1, 128, False, 512, 2048, 16),
             ("4096 tokens", 8, 512, False, 512, 2048, 16)]


def median_time(fn, min_time, min_runs=3):
    fn()  # warm-up
    times, start = [], time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - start < min_time:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def paired(py_call, engine_call, min_time, min_runs=5):
    """Medians of the engine's own time and of (Python call - engine call), the two timed back to
    back in this process, so that the machine's drift cancels out of the difference."""
    py_call(), engine_call()
    eng, diff, start = [], [], time.perf_counter()
    while len(diff) < min_runs or time.perf_counter() - start < min_time:
        t = time.perf_counter()
        py_call()
        p = time.perf_counter() - t
        e = engine_call()
        eng.append(e)
        diff.append(p - e)
    return statistics.median(eng), statistics.median(diff)


def cpp(args, B, T, dropless, H, F, E):
    cmd = [args.binary, "bench", "moe", "--router", "tokens_choose", "--k", "1", "--batch", str(B),
           "--tokens-per-group", str(T), "--hidden", str(H), "--d-ff", str(F), "--experts", str(E),
           "--min-time", str(args.min_time), "--json"]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if dropless:
        cmd.append("--dropless")
    r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    return r["results"][0]["forward_ms"] / 1e3, r["results"][0]["forward_backward_ms"] / 1e3, r


def config(dropless, H, F, E):
    return {"hidden_size": H,
            "experts": {"num_experts": E, "d_ff": F, "activation": "gelu_tanh"},
            "router": {"type": "tokens_choose", "num_selected_experts": 1},
            "train_capacity_factor": 1.0, "eval_capacity_factor": 1.0, "dropless": dropless}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=0, help="engine and torch threads")
    ap.add_argument("--min-time", type=float, default=1.0)
    ap.add_argument("--binary", default=os.path.join(ROOT, "build", "sparsemoe"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows, pairs = [], []
    env = None
    for name, B, T, dropless, H, F, E in SCENARIOS:
        c_fwd, c_fb, r = cpp(args, B, T, dropless, H, F, E)
        env = r["environment"]
        layer = sparsemoe.MoeLayer(config(dropless, H, F, E))
        x = np.random.default_rng(1).uniform(-1, 1, (B, T, H)).astype(np.float32)
        dy = np.random.default_rng(2).uniform(-1, 1, (B, T, H)).astype(np.float32)
        n_fwd = median_time(lambda: layer.forward(x, training=True), args.min_time)

        def fb():
            layer.forward(x, training=True)
            layer.backward(dy)
        n_fb = median_time(fb, args.min_time)
        mod = sparsemoe.torch.MoeLayer(config(dropless, H, F, E))
        xt, dyt = torch.from_numpy(x), torch.from_numpy(dy)

        def t_fwd():
            with torch.no_grad():
                mod(xt)
        t_f = median_time(t_fwd, args.min_time)

        def t_fb():
            mod(xt).backward(dyt)
        t_b = median_time(t_fb, args.min_time)
        peer = torch_peer.Layer(H, F, E)

        def p_fwd():
            with torch.no_grad():
                peer.sparse(xt, "tokens_choose", 1, 1.0, dropless)
        p_f = median_time(p_fwd, args.min_time)

        def p_fb():
            peer.sparse(xt, "tokens_choose", 1, 1.0, dropless).backward(dyt)
        p_b = median_time(p_fb, args.min_time)
        pair_f = paired(lambda: layer.forward(x, training=True),
                        lambda: layer._impl._time_engine(x, True, False), args.min_time)
        pair_b = paired(fb, lambda: layer._impl._time_engine(x, True, True), args.min_time)
        rows.append((name, c_fwd, n_fwd, t_f, c_fb, n_fb, t_b, p_f, p_b))
        pairs.append((name, pair_f, pair_b))
    print(f"# {env['cpu']}, {env['simd']}, threads {env['threads']}; medians; overhead = "
          f"Python - C++")
    print("| tokens | C++ fwd | numpy fwd (overhead) | torch fwd (overhead) | C++ fwd+bwd | "
          "numpy fwd+bwd (overhead) | torch fwd+bwd (overhead) | PyTorch sparse fwd, fwd+bwd "
          "(torch module's speed-up) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, c_f, n_f, t_f, c_b, n_b, t_b, p_f, p_b in rows:
        def cell(t, ref):
            d = t - ref
            return f"{t * 1e3:.4f} ms ({d * 1e6:+.1f} us, {d / ref:+.1%})"
        print(f"| {name} | {c_f * 1e3:.4f} ms | {cell(n_f, c_f)} | {cell(t_f, c_f)} | "
              f"{c_b * 1e3:.4f} ms | {cell(n_b, c_b)} | {cell(t_b, c_b)} | "
              f"{p_f * 1e3:.3f} ms ({p_f / t_f:.2f}x), {p_b * 1e3:.3f} ms ({p_b / t_b:.2f}x) |")
    print("\nIn this process, each numpy call paired with the engine's own call on the same layer "
          "(timed in C++ around the call alone); medians of the engine's time and of the "
          "differences:\n")
    print("| tokens | engine fwd | numpy - engine, fwd | engine fwd+bwd | numpy - engine, fwd+bwd |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, (e_f, d_f), (e_b, d_b) in pairs:
        print(f"| {name} | {e_f * 1e3:.4f} ms | {d_f * 1e6:+.1f} us ({d_f / e_f:+.2%}) | "
              f"{e_b * 1e3:.4f} ms | {d_b * 1e6:+.1f} us ({d_b / e_b:+.2%}) |")


if __name__ == "__main__":
    main()
