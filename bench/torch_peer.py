#!/usr/bin/python3
"""PyTorch peer for `sparsemoe bench moe`: the same MoE layer (router, experts-choose,
tokens-choose top-k or lingvo top-2 routing, GELU-tanh expert FFNs), written two ways, timed in this process
next to our engine run as a subprocess in the same environment:

  einsum  the reference sources' formulation: dense [G,T,E,C] dispatch/combine masks and einsums
  sparse  a gather / per-expert matmul / index_add loop over the routed tokens only

Prints a table of our speed as a ratio to the faster PyTorch formulation, and --json output.
PyTorch's forward runs under no_grad, so two forward ratios are printed: against our inference
forward (packed weights, evaluation mode, nothing saved: the like-for-like one, "inf") and against
our training forward (which packs the expert weights and saves for the backward, "fwd").
Forward+backward: ours adds into gradient buffers that are not zeroed between calls; "written" is
ours with GradMode::kOverwrite (every gradient written, no zeroing pass needed, experts without
tokens zeroed), PyTorch with each .grad set to None first (per-expert tensors: unused ones stay
None).
Run with Debian's /usr/bin/python3 (python3-torch). Scenarios: 4096 tokens (8 x 512), one
sequence of 128 tokens, and a single token (tokens-choose, dropless). On a noisy (shared, virtual)
machine, --rounds N measures every scenario N times, ours and PyTorch in turn, and keeps each
side's fastest median of each quantity: a burst of noise then costs neither side a cell."""
import argparse
import json
import os
import subprocess
import sys
import time

import torch
import torch.nn.functional as nnf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def capacity(cf, T, E):
    return int(round(cf * T / E))  # Python round: half to even, as the engine


def lingvo_capacity(cf, S, E):
    c = int(S * cf / E) or 4  # truncation, 0 -> 4, then up to a multiple of 4
    return (c + 3) // 4 * 4


def route_top2(probs, C):
    """lingvo Top2GatingOnLogits, policy 'all', legacy gates (renormalised before the drop)."""
    G, T, E = probs.shape
    g1, i1 = probs.max(-1)
    rest = probs.scatter(-1, i1.unsqueeze(-1), 0.0)
    g2, i2 = rest.max(-1)
    d = g1 + g2 + 1e-9
    w = (g1 / d, g2 / d)
    m1 = nnf.one_hot(i1, E)
    pos1 = ((torch.cumsum(m1, 1) - m1) * m1).sum(-1)
    keep1 = pos1 < C
    count1 = (m1 * keep1.unsqueeze(-1)).sum(1, keepdim=True)  # [G,1,E] kept first choices
    m2 = nnf.one_hot(i2, E)
    pos2 = ((torch.cumsum(m2, 1) - m2 + count1) * m2).sum(-1)
    keep2 = pos2 < C
    out = []
    for e in range(E):
        toks, ws, gs, ts, cs = [], [], [], [], []
        for idx, pos, keep, wj in ((i1, pos1, keep1, w[0]), (i2, pos2, keep2, w[1])):
            g, t = torch.nonzero((idx == e) & keep, as_tuple=True)
            toks.append(g * T + t)
            ws.append(wj[g, t])
            gs.append(g), ts.append(t), cs.append(pos[g, t])
        out.append((torch.cat(toks), torch.cat(ws), (torch.cat(gs), torch.cat(ts), torch.cat(cs)),
                    None))
    return out, C


def route(probs, router, k, C, dropless):
    """probs [G,T,E] -> list of (expert, flat token idx, weight) tensors per expert, and C."""
    G, T, E = probs.shape
    if router == "top2":
        return route_top2(probs, lingvo_capacity(C, T, E))  # C carries the capacity factor
    if router == "experts_choose":
        w, idx = torch.topk(probs.transpose(1, 2), C, dim=-1)  # [G,E,C]
        toks = idx + (torch.arange(G) * T).view(G, 1, 1)
        return [(toks[:, e].reshape(-1), w[:, e].reshape(-1), idx[:, e], w[:, e]) for e in range(E)], C
    gate, eidx = torch.topk(probs, k, dim=-1)  # [G,T,k]
    order = torch.argsort(-gate[..., 0], dim=1, stable=True)  # batch-prioritized
    eidx_o = torch.gather(eidx, 1, order.unsqueeze(-1).expand(-1, -1, k))
    onehot = nnf.one_hot(eidx_o.transpose(1, 2).reshape(G, k * T), E)  # [G,kT,E] choice-major
    pos = (torch.cumsum(onehot, dim=1) - 1) * onehot
    pos = pos.sum(-1).view(G, k, T).transpose(1, 2)  # [G,T(ordered),k]
    pos = torch.empty_like(pos).scatter_(1, order.unsqueeze(-1).expand(-1, -1, k), pos)
    if dropless:
        C = int(pos.max()) + 1
    keep = pos < C
    out = []
    for e in range(E):
        m = (eidx == e) & keep  # [G,T,k]
        g, t, j = torch.nonzero(m, as_tuple=True)
        out.append((g * T + t, probs[g, t, e], (g, t, pos[g, t, j]), None))
    return out, C


class Layer:
    def __init__(self, H, F, E):
        torch.manual_seed(0)
        self.wr = (torch.randn(H, E) * 0.02).requires_grad_()
        self.br = torch.zeros(E, requires_grad=True)
        self.w1 = (torch.randn(E, H, F) * 0.02).requires_grad_()
        self.b1 = torch.zeros(E, F, requires_grad=True)
        self.w2 = (torch.randn(E, F, H) * 0.02).requires_grad_()
        self.b2 = torch.zeros(E, H, requires_grad=True)
        # The sparse loop uses per-expert leaf tensors (as an nn.ModuleList would): slicing the
        # stacked [E, ...] tensors makes autograd build a full [E, ...] gradient per expert.
        self.experts = [tuple(t[e].detach().clone().requires_grad_() for t in
                              (self.w1, self.b1, self.w2, self.b2)) for e in range(E)]

    def params(self):
        return [self.wr, self.br, self.w1, self.b1, self.w2, self.b2] + [
            t for ex in self.experts for t in ex]

    def probs(self, x):
        return torch.softmax(x @ self.wr + self.br, dim=-1)

    def sparse(self, x, router, k, cf, dropless):
        G, T, H = x.shape
        p = self.probs(x)
        plan, C = route(p, router, k, cf if router == "top2" else capacity(cf, T, p.shape[-1]),
                        dropless)
        flat = x.reshape(G * T, H)
        y = torch.zeros_like(flat)
        for e, (toks, w, _, _) in enumerate(plan):
            if toks.numel() == 0:
                continue
            w1, b1, w2, b2 = self.experts[e]
            h = nnf.gelu(torch.index_select(flat, 0, toks) @ w1 + b1, approximate="tanh")
            y = y.index_add(0, toks, (h @ w2 + b2) * w.unsqueeze(-1))
        return y.view(G, T, H)

    def einsum(self, x, router, k, cf, dropless):
        G, T, H = x.shape
        p = self.probs(x)
        E = p.shape[-1]
        # top2's combine weights are renormalised gates and need their gradient from the plan.
        plan, C = route(p if router == "top2" else p.detach(), router, k,
                        cf if router == "top2" else capacity(cf, T, E), dropless)
        dispatch = torch.zeros(G, T, E, C)
        combine = torch.zeros(G, T, E, C)
        for e, (toks, _, slots, _) in enumerate(plan):
            if router == "experts_choose":
                g = torch.arange(G).view(G, 1).expand(G, C)
                dispatch[g.reshape(-1), slots.reshape(-1), e, torch.arange(C).repeat(G)] = 1.0
            else:
                g, t, c = slots
                dispatch[g, t, e, c] = 1.0
                if router == "top2":  # renormalised gates, differentiable
                    combine = combine.index_put((g, t, torch.full_like(g, e), c), plan[e][1])
        if router != "top2":
            combine = dispatch * p.unsqueeze(-1)
        xin = torch.einsum("gtec,gth->gech", dispatch, x)
        h = nnf.gelu(torch.einsum("gech,ehf->gecf", xin, self.w1) + self.b1.view(1, E, 1, -1),
                     approximate="tanh")
        out = torch.einsum("gecf,efh->gech", h, self.w2) + self.b2.view(1, E, 1, -1)
        return torch.einsum("gtec,gech->gth", combine, out)


def timeit(fn, min_time):
    fn()
    ts, start = [], time.perf_counter()
    while len(ts) < 3 or time.perf_counter() - start < min_time:
        a = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - a)
    ts.sort()
    return ts[len(ts) // 2]


def ours(args, sc, threads):
    cmd = [args.engine, "bench", "moe", "--json", "--threads", str(threads), "--min-time",
           str(args.min_time), "--hidden", str(args.hidden), "--d-ff", str(args.d_ff),
           "--experts", str(args.experts), "--tokens-per-group", str(sc["T"]), "--batch",
           str(sc["B"]), "--router", sc["router"], "--k", str(sc["k"]), "--capacity-factor",
           str(args.capacity_factor)] + (["--dropless"] if sc["dropless"] else [])
    res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    return res["results"][0], res["environment"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", default=os.path.join(ROOT, "build", "sparsemoe"))
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--d-ff", type=int, default=2048)
    ap.add_argument("--experts", type=int, default=16)
    ap.add_argument("--capacity-factor", type=float, default=1.0)
    ap.add_argument("--min-time", type=float, default=1.0)
    ap.add_argument("--scenarios", default="4096,128,1")
    ap.add_argument("--routers", default="", help="comma list to keep (e.g. top2); default all")
    ap.add_argument("--rounds", type=int, default=1,
                    help="measure each scenario this many times, ours and PyTorch alternating, and "
                         "keep each side's fastest median of each quantity (for noisy machines)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    scenarios = []
    for s in args.scenarios.split(","):
        if s == "4096":
            scenarios += [dict(name="4096 tok", B=8, T=512, router=r, k=k, dropless=False)
                          for r, k in (("experts_choose", 1), ("tokens_choose", 1), ("tokens_choose", 2),
                                       ("top2", 2))]
        elif s == "128":
            scenarios += [dict(name="128 tok", B=1, T=128, router=r, k=k, dropless=False)
                          for r, k in (("experts_choose", 1), ("tokens_choose", 1), ("tokens_choose", 2),
                                       ("top2", 2))]
        elif s == "1":
            scenarios += [dict(name="1 tok", B=1, T=1, router="tokens_choose", k=k, dropless=True)
                          for k in (1, 2)]
    if args.routers:
        keep = args.routers.split(",")
        scenarios = [sc for sc in scenarios if sc["router"] in keep]
    rows = []
    env = None
    for threads in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(threads)
        for sc in scenarios:
            layer = Layer(args.hidden, args.d_ff, args.experts)
            # The input needs a gradient, as inside a network: the backward computes dx too.
            x = (torch.rand(sc["B"], sc["T"], args.hidden) * 2 - 1).requires_grad_()
            dy = torch.rand_like(x) * 2 - 1
            row = dict(scenario=sc["name"], router=sc["router"], k=sc["k"], threads=threads,
                       rounds=args.rounds)
            mine = {}

            def keep(key, value):  # the fastest over the rounds
                row[key] = min(row.get(key, value), value)
            for _ in range(max(1, args.rounds)):
                got, env = ours(args, sc, threads)
                for key in ("forward_ms", "forward_backward_ms", "inference_ms",
                            "forward_backward_written_ms"):
                    keep("ours_" + key, got[key])
                # GFLOP/s of our fastest round; the library's best rate
                if got["forward_ms"] <= row["ours_forward_ms"]:
                    mine["forward_gflops"] = got["forward_gflops"]
                if got["forward_backward_ms"] <= row["ours_forward_backward_ms"]:
                    mine["forward_backward_gflops"] = got["forward_backward_gflops"]
                mine["library_gemm_gflops"] = max(mine.get("library_gemm_gflops", 0),
                                                  got["library_gemm_gflops"])
                for form in ("einsum", "sparse"):
                    fn = getattr(layer, form)
                    with torch.no_grad():
                        f = timeit(lambda: fn(x, sc["router"], sc["k"], args.capacity_factor, sc["dropless"]), args.min_time)

                    def fb():
                        for p in layer.params():
                            p.grad = None
                        x.grad = None
                        (fn(x, sc["router"], sc["k"], args.capacity_factor, sc["dropless"]) * dy).sum().backward()
                    b = timeit(fb, args.min_time)
                    keep(f"torch_{form}_fwd_ms", f * 1e3)
                    keep(f"torch_{form}_fb_ms", b * 1e3)
            row["ours_fwd_ms"] = row.pop("ours_forward_ms")
            row["ours_fb_ms"] = row.pop("ours_forward_backward_ms")
            row["ours_infer_ms"] = row.pop("ours_inference_ms")
            best_f = min(row["torch_einsum_fwd_ms"], row["torch_sparse_fwd_ms"])
            best_b = min(row["torch_einsum_fb_ms"], row["torch_sparse_fb_ms"])
            row["speedup_fwd"] = best_f / row["ours_fwd_ms"]
            row["speedup_infer"] = best_f / row["ours_infer_ms"]
            row["speedup_fb"] = best_b / row["ours_fb_ms"]
            row["ours_fwd_gflops"] = mine["forward_gflops"]
            row["ours_fb_gflops"] = mine["forward_backward_gflops"]
            # Gradients written (GradMode::kOverwrite): the step's gradient work with no zeroing
            # pass, experts without tokens zeroed; PyTorch's per-expert tensors leave those None.
            row["ours_fb_written_ms"] = row.pop("ours_forward_backward_written_ms")
            row["speedup_fb_written"] = best_b / row["ours_fb_written_ms"]
            row["library_gemm_gflops"] = mine["library_gemm_gflops"]
            rows.append(row)
            if not args.json:
                print(f"{row['scenario']:9} {row['router']:14} k={row['k']} thr={threads} | "
                      f"ours inf {row['ours_infer_ms']:8.3f} fwd {row['ours_fwd_ms']:8.3f} ms "
                      f"fwd+bwd {row['ours_fb_ms']:8.3f} ms | "
                      f"torch einsum {row['torch_einsum_fwd_ms']:8.3f}/{row['torch_einsum_fb_ms']:8.3f} "
                      f"sparse {row['torch_sparse_fwd_ms']:8.3f}/{row['torch_sparse_fb_ms']:8.3f} ms | "
                      f"speedup inf {row['speedup_infer']:5.2f}x fwd {row['speedup_fwd']:5.2f}x "
                      f"fwd+bwd {row['speedup_fb']:5.2f}x (written {row['ours_fb_written_ms']:8.3f} ms "
                      f"{row['speedup_fb_written']:5.2f}x)", flush=True)
    info = dict(torch=torch.__version__, torch_config_blas=[l.strip() for l in torch.__config__.show().splitlines() if "BLAS" in l],
                OPENBLAS_CORETYPE=os.environ.get("OPENBLAS_CORETYPE", "(unset)"),
                LD_LIBRARY_PATH=os.environ.get("LD_LIBRARY_PATH", ""), engine=env)
    if args.json:
        print(json.dumps(dict(environment=info, results=rows), indent=2))
    else:
        print("environment:", json.dumps(info))


if __name__ == "__main__":
    sys.exit(main())
