#!/usr/bin/python3
"""PyTorch peer for `sparsemoe bench model`: the same networks as our presets (presets/*.json,
with the same --set overrides) written in PyTorch, timed in this process next to our engine run
as a subprocess with the same batch, thread count and environment.

The network is the paper's wiring (post-LN around every sublayer, MoE included): embeddings
(word + position + type, LayerNorm 1e-12, dropout, projection when the width differs), linear /
Fourier / Hartley mixing or multi-head self-attention (softmax(QK^T/sqrt(d) - 1e9 on padded keys),
as torch 1.13 has no fused attention), dense GELU-tanh FFN or an experts-choose MoE (top-C tokens per expert and
group, expert matmuls batched (training) or one per expert (inference), whichever
formulation torch runs faster, index_add combine), the tanh pooler, a masked-LM head on 15% of
the positions (tied output embedding) and a 2-class head on the pooled output.

Inference: eval-mode forward under torch.no_grad(). Training step: zero_grad, train-mode forward,
both heads' cross-entropy losses, backward (no optimizer update, as ours). Reports tokens/s and
our speed as a ratio to PyTorch's, and each engine's speed-up of every preset over the baseline.
Run with Debian's /usr/bin/python3 (python3-torch)."""
import argparse
import json
import math
import os
import subprocess
import time

import torch
import torch.nn as nn
import torch.nn.functional as nnf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULTS = {  # SparseMixerConfig defaults (the reference sources'), for keys a preset leaves out
    "hidden_size": 512, "num_layers": 14, "moe_layers": [5, 6, 7, 8],
    "attention_layers": [10, 11, 12, 13], "num_experts": 16, "train_capacity_factor": 1.0,
    "eval_capacity_factor": 1.0, "examples_per_group": 1.0, "mixing_mechanism": "linear",
    "num_attention_heads": 8, "max_sequence_length": 512, "type_vocab_size": 16,
    "inner_dim": 2048, "inner_activation": "gelu_tanh", "output_dropout": 0.1,
    "attention_dropout": 0.1, "initializer_range": 0.02, "embedding_width": 0,
    "min_expert_capacity": 0}


def layer_layout(spec, n_layers):
    if isinstance(spec, list):
        return spec
    name, n = spec["layout"], spec["count"]
    pick = {"bottom": lambda l: l < n, "top": lambda l: l >= n_layers - n,
            "middle": lambda l: n_layers - n <= 2 * l < n_layers + n,
            "mixed": lambda l: n > 0 and l % (n_layers // n) == 0}[name]
    return [l for l in range(n_layers) if pick(l)]


def load_config(preset, sets):
    path = preset if os.path.isfile(preset) else os.path.join(ROOT, "presets", preset + ".json")
    c = json.load(open(path))
    for kv in sets:  # dotted paths, as `sparsemoe bench model --set`
        k, v = kv.split("=", 1)
        node, *parts = [c] + k.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        try:
            node[parts[-1]] = json.loads(v)
        except json.JSONDecodeError:
            node[parts[-1]] = v
    # The MoE layers' settings are nested under "moe" (MoeLayerConfig); this peer reads them flat.
    moe = c.pop("moe", {})
    for k in ("train_capacity_factor", "eval_capacity_factor", "examples_per_group",
              "min_expert_capacity"):
        if k in moe:
            c[k] = moe[k]
    if "num_experts" in moe.get("experts", {}):
        c["num_experts"] = moe["experts"]["num_experts"]
    c = {**DEFAULTS, **c}
    for k in ("moe_layers", "attention_layers"):
        c[k] = layer_layout(c[k], c["num_layers"])
    return c


def act(name):
    return {"gelu_tanh": lambda x: nnf.gelu(x, approximate="tanh"), "gelu": nnf.gelu,
            "relu": nnf.relu}[name]


class Mixing(nn.Module):
    def __init__(self, kind, L, H):
        super().__init__()
        self.kind = kind
        if kind == "linear":
            self.seq = nn.Parameter(torch.randn(L, L) * 0.02)
            self.hid = nn.Parameter(torch.randn(H, H) * 0.02)

    def forward(self, x, mask):
        if self.kind == "linear":
            return torch.matmul(self.seq, x @ self.hid)
        f = torch.fft.fftn(x, dim=(-2, -1))
        return f.real if self.kind == "fourier" else f.real - f.imag


class Attention(nn.Module):
    def __init__(self, H, heads, p):
        super().__init__()
        self.heads, self.p = heads, p
        self.qkv, self.out = nn.Linear(H, 3 * H), nn.Linear(H, H)

    def forward(self, x, mask):
        B, L, H = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.heads, H // self.heads).permute(2, 0, 3, 1, 4)
        scores = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(H // self.heads)) + mask
        probs = nnf.dropout(torch.softmax(scores, -1), self.p, self.training)
        return self.out((probs @ v).transpose(1, 2).reshape(B, L, H))


class Ffn(nn.Module):
    def __init__(self, H, F, activation, p):
        super().__init__()
        self.w1, self.w2, self.act, self.drop = nn.Linear(H, F), nn.Linear(F, H), act(activation), nn.Dropout(p)

    def forward(self, x):
        return self.drop(self.w2(self.act(self.w1(x))))


class ExpertsChooseMoe(nn.Module):
    def __init__(self, c):
        super().__init__()
        H, F, E = c["hidden_size"], c["inner_dim"], c["num_experts"]
        self.E, self.c = E, c
        self.router = nn.Linear(H, E)
        self.w1 = nn.Parameter(torch.randn(E, H, F) * 0.02)
        self.b1 = nn.Parameter(torch.zeros(E, 1, F))
        self.w2 = nn.Parameter(torch.randn(E, F, H) * 0.02)
        self.b2 = nn.Parameter(torch.zeros(E, 1, H))
        self.act, self.drop = act(c["inner_activation"]), nn.Dropout(c["output_dropout"])

    def forward(self, x):
        B, L, H = x.shape
        T = int(L * self.c["examples_per_group"])
        G = B * L // T
        cf = self.c["train_capacity_factor" if self.training else "eval_capacity_factor"]
        C = min(T, max(int(round(cf * T / self.E)), self.c["min_expert_capacity"]))
        xg = x.reshape(G, T, H)
        probs = torch.softmax(self.router(xg).float(), -1)  # [G, T, E]
        gates, idx = probs.transpose(1, 2).topk(C, dim=-1)  # [G, E, C]
        flat = (idx + torch.arange(G).view(G, 1, 1) * T).transpose(0, 1).reshape(self.E, G * C)
        xe = x.reshape(G * T, H)[flat]  # [E, G*C, H]
        if torch.is_grad_enabled():  # batched: torch's faster form with autograd
            h = self.act(torch.baddbmm(self.b1, xe, self.w1))
            ye = self.drop(torch.baddbmm(self.b2, h, self.w2))
        else:  # one addmm per expert: torch's faster form without (bmm is up to 2x slower)
            ye = torch.stack([torch.addmm(self.b2[e], self.act(torch.addmm(self.b1[e], xe[e],
                              self.w1[e])), self.w2[e]) for e in range(self.E)])
        ye = ye * gates.transpose(0, 1).reshape(self.E, G * C, 1)
        out = torch.zeros(G * T, H).index_add_(0, flat.reshape(-1), ye.reshape(-1, H))
        return out.view(B, L, H)


class Block(nn.Module):
    def __init__(self, c, l):
        super().__init__()
        H, L = c["hidden_size"], c["max_sequence_length"]
        self.mix = (Attention(H, c["num_attention_heads"], c["attention_dropout"])
                    if l in c["attention_layers"] else Mixing(c["mixing_mechanism"], L, H))
        self.ff = (ExpertsChooseMoe(c) if l in c["moe_layers"]
                   else Ffn(H, c["inner_dim"], c["inner_activation"], c["output_dropout"]))
        self.ln1, self.ln2 = nn.LayerNorm(H, eps=1e-12), nn.LayerNorm(H, eps=1e-12)

    def forward(self, x, mask):
        a = self.ln1(x + self.mix(x, mask))
        return self.ln2(a + self.ff(a))


class Network(nn.Module):
    def __init__(self, c):
        super().__init__()
        H, V, L = c["hidden_size"], c["vocab_size"], c["max_sequence_length"]
        W = c["embedding_width"] or H
        self.word, self.pos = nn.Embedding(V, W), nn.Parameter(torch.randn(L, W) * 0.02)
        self.type_emb = nn.Embedding(c["type_vocab_size"], W)
        self.emb_ln, self.emb_drop = nn.LayerNorm(W, eps=1e-12), nn.Dropout(c["output_dropout"])
        self.proj = nn.Linear(W, H) if W != H else nn.Identity()
        self.blocks = nn.ModuleList(Block(c, l) for l in range(c["num_layers"]))
        self.pooler = nn.Linear(H, H)
        self.mlm_dense, self.mlm_ln = nn.Linear(H, W), nn.LayerNorm(W, eps=1e-12)
        self.mlm_bias = nn.Parameter(torch.zeros(V))
        self.nsp_drop, self.nsp = nn.Dropout(c["output_dropout"]), nn.Linear(H, 2)
        self.act = act(c["inner_activation"])

    def encode(self, ids, types, pad):
        x = self.word(ids) + self.pos + self.type_emb(types)
        x = self.proj(self.emb_drop(self.emb_ln(x)))
        mask = (1.0 - pad[:, None, None, :]) * -1e9  # [B, 1, 1, L]: -1e9 on padded keys
        for b in self.blocks:
            x = b(x, mask)
        return x, torch.tanh(self.pooler(x[:, 0]))

    def pretrain_loss(self, ids, types, pad, positions, mlm_labels, nsp_labels):
        seq, pooled = self.encode(ids, types, pad)
        g = torch.gather(seq, 1, positions.unsqueeze(-1).expand(-1, -1, seq.shape[-1]))
        h = self.mlm_ln(self.act(self.mlm_dense(g)))
        logits = h @ self.word.weight.t() + self.mlm_bias
        nsp = self.nsp(self.nsp_drop(pooled))
        return (nnf.cross_entropy(logits.reshape(-1, logits.shape[-1]), mlm_labels.reshape(-1)) +
                nnf.cross_entropy(nsp, nsp_labels))


def timeit(fn, min_time, min_runs):
    fn()
    ts, start = [], time.perf_counter()
    while len(ts) < min_runs or time.perf_counter() - start < min_time:
        a = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - a)
    ts.sort()
    return ts[len(ts) // 2]


def bench_torch(c, B, mode, min_time, min_runs):
    torch.manual_seed(0)
    net = Network(c)
    L, V = c["max_sequence_length"], c["vocab_size"]
    P = max(1, round(0.15 * L))
    ids = torch.randint(0, V, (B, L))
    types, pad = torch.zeros(B, L, dtype=torch.long), torch.ones(B, L)
    positions = (torch.arange(P).view(1, P) * L // P + torch.arange(B).view(B, 1)) % L
    mlm_labels, nsp_labels = torch.randint(0, V, (B, P)), torch.arange(B) % 2
    r = {"params": sum(p.numel() for p in net.parameters())}
    if mode != "train":
        net.eval()
        with torch.no_grad():
            t = timeit(lambda: net.encode(ids, types, pad), min_time, min_runs)
        r["inference_tokens_per_s"] = B * L / t
    if mode != "infer":
        net.train()

        def step():
            net.zero_grad()
            net.pretrain_loss(ids, types, pad, positions, mlm_labels, nsp_labels).backward()
        t = timeit(step, min_time, min_runs)
        r["train_tokens_per_s"] = B * L / t
    return r


def bench_ours(args, preset, threads):
    cmd = [args.engine, "bench", "model", "--json", "--preset", preset, "--batch",
           str(args.batch), "--threads", str(threads), "--mode", args.mode, "--min-time",
           str(args.min_time), "--min-runs", str(args.min_runs)]
    for kv in args.set:
        cmd += ["--set", kv]
    res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    return res["results"][0], res["environment"]


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", default=os.path.join(ROOT, "build", "sparsemoe"))
    ap.add_argument("--preset", default="sparse_mixer_base,fast_sparse_mixer,bert_base")
    ap.add_argument("--baseline", default="bert_base")
    ap.add_argument("--set", action="append", default=[], help="key=value override (repeatable)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", default="2")
    ap.add_argument("--mode", default="both", choices=["train", "infer", "both"])
    ap.add_argument("--min-time", type=float, default=2.0)
    ap.add_argument("--min-runs", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = []
    for threads in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(threads)
        for preset in args.preset.split(","):
            c = load_config(preset, args.set)
            ours, env = bench_ours(args, preset, threads)
            peer = bench_torch(c, args.batch, args.mode, args.min_time, args.min_runs)
            # The same network on both sides (torch's fused qkv has the same parameter count).
            assert ours["params"] == peer["params"], (preset, ours["params"], peer["params"])
            row = {"preset": preset, "threads": threads, "batch": args.batch,
                   "sequence_length": c["max_sequence_length"], "params": ours["params"],
                   "environment": env}
            for k in ("inference", "train"):
                key = k + "_tokens_per_s"
                if key in ours:
                    row[k] = {"ours": ours[key], "torch": peer[key], "ratio": ours[key] / peer[key]}
            rows.append(row)
    for threads in {r["threads"] for r in rows}:
        base = [r for r in rows if r["threads"] == threads and r["preset"] == args.baseline]
        for r in rows:
            if base and r["threads"] == threads:
                for k in ("inference", "train"):
                    if k in r:
                        r[k]["ours_speedup_vs_baseline"] = r[k]["ours"] / base[0][k]["ours"]
                        r[k]["torch_speedup_vs_baseline"] = r[k]["torch"] / base[0][k]["torch"]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print("environment:", json.dumps(rows[0]["environment"]), "torch", torch.__version__)
    print(f"{'preset':<20}{'thr':>4}{'params':>12} | {'mode':<9}{'ours tok/s':>11}"
          f"{'torch tok/s':>12}{'ours/torch':>11} | speed-up vs {args.baseline}: ours  torch")
    for r in rows:
        for k in ("train", "inference"):
            if k in r:
                m = r[k]
                sp = (f"{m['ours_speedup_vs_baseline']:>6.2f}x {m['torch_speedup_vs_baseline']:>6.2f}x"
                      if "ours_speedup_vs_baseline" in m else "")
                print(f"{r['preset']:<20}{r['threads']:>4}{r['params']:>12} | {k:<9}"
                      f"{m['ours']:>11.0f}{m['torch']:>12.0f}{m['ratio']:>10.2f}x | {sp}")


if __name__ == "__main__":
    main()
