"""A plain-PyTorch MoE layer with the engine's semantics (docs/semantics.md; spec sections 2-9),
written from the spec with autograd doing every gradient: the yardstick the package's tests
compare sparsemoe's forward, input gradient and weight gradients against. No jitter and no
dropout (those draw from the engine's own random streams); groups are whole sequences.

Routers: tokens_choose (top-k, optional batch-prioritised order, dropless), experts_choose, and
lingvo's top2 (policy 'all', legacy normalisation). The returned loss term is what the engine's
MoeMetrics.loss adds: load_balancing_loss_weight * aux + router_z_loss_weight * z-loss."""
import math

import torch
import torch.nn.functional as nnf


def capacity(cf, T, E):
    return int(round(cf * T / E))  # Python round: half to even, as tf-models


def lingvo_capacity(c_dim, cf, S, E):
    if not cf > 0:
        return c_dim
    c = int(S * cf / E) or 4
    return c_dim if c_dim >= c else (c + 3) // 4 * 4


def activation(name, h):
    if name == "gelu":
        return nnf.gelu(h)  # exact (erf), the tf-models default
    if name == "relu":
        return torch.relu(h)
    if name == "silu":
        return nnf.silu(h)
    if name == "gelu_tanh":
        return nnf.gelu(h, approximate="tanh")
    raise ValueError(f"activation {name} not in the reference")


def plan_tokens_choose(p, k, C, bpr, dropless):
    """-> list of (g, t, e) kept choices with their combine weight p[g, t, e], the aux loss."""
    G, T, E = p.shape
    gate, idx = torch.topk(p.detach(), k, dim=-1)  # [G, T, k]
    mask = nnf.one_hot(idx, E).amax(2).float()  # [G, T, E]
    aux = (mask.mean(1) * p.mean(1)).mean() * E * E
    counts = torch.zeros(G, E, dtype=torch.long)
    pos = torch.empty(G, T, k, dtype=torch.long)
    for g in range(G):
        order = (torch.argsort(-gate[g, :, 0], stable=True) if bpr else torch.arange(T)).tolist()
        for j in range(k):
            for t in order:
                e = int(idx[g, t, j])
                pos[g, t, j] = counts[g, e]
                counts[g, e] += 1
    if dropless:
        C = int(pos.max()) + 1
    kept = [(g, t, int(idx[g, t, j])) for g in range(G) for t in range(T) for j in range(k)
            if pos[g, t, j] < C]
    return [(g, t, e, p[g, t, e]) for g, t, e in kept], aux


def plan_experts_choose(p, C):
    G, T, E = p.shape
    sel = torch.topk(p.detach().transpose(1, 2), C, dim=-1).indices  # [G, E, C]
    return [(g, int(t), e, p[g, int(t), e]) for g in range(G) for e in range(E)
            for t in sel[g, e]], p.sum() * 0


def plan_top2(p, C):
    """lingvo Top2GatingOnLogits, second_expert_policy 'all', legacy_mtf_behavior."""
    G, S, E = p.shape
    i1 = p.detach().argmax(-1)
    m1 = nnf.one_hot(i1, E).float()
    aux = (m1.mean(1) * p.mean(1)).mean() * E * E
    g1 = (p * m1).sum(-1)
    rest = p * (1 - m1)
    i2 = rest.detach().argmax(-1)
    m2 = nnf.one_hot(i2, E).float()
    g2 = (rest * m2).sum(-1)
    d = g1 + g2 + 1e-9
    g1, g2 = g1 / d, g2 / d
    pos1 = ((torch.cumsum(m1, 1) - m1) * m1).sum(-1)
    keep1 = pos1 < C
    count1 = (m1 * keep1.unsqueeze(-1)).sum(1, keepdim=True)
    pos2 = ((torch.cumsum(m2, 1) - m2 + count1) * m2).sum(-1)
    keep2 = pos2 < C
    out = []
    for g in range(G):
        for s in range(S):
            if keep1[g, s]:
                out.append((g, s, int(i1[g, s]), g1[g, s]))
            if keep2[g, s]:
                out.append((g, s, int(i2[g, s]), g2[g, s]))
    return out, aux


def moe_forward(cfg, w, x, training=False):
    """cfg: the engine's MoeLayerConfig as a dict (defaults filled in); w: name -> tensor with the
    engine's parameter names; x [B, L, H]. -> (y [B, L, H], routing loss term, metrics dict)."""
    B, L, H = x.shape
    T = int(L * cfg["examples_per_group"])
    G = B * L // T
    r, ex = cfg["router"], cfg["experts"]
    E = ex["num_experts"]
    xg = x.reshape(G, T, H)
    logits = xg @ w["router/router_weights/kernel"]
    if r["use_bias"]:
        logits = logits + w["router/router_weights/bias"]
    p = torch.softmax(logits, dim=-1)
    z = (torch.logsumexp(logits, dim=-1) ** 2).mean()
    cf = cfg["train_capacity_factor"] if training else cfg["eval_capacity_factor"]
    if r["type"] == "tokens_choose":
        C = max(capacity(cf, T, E), cfg["min_expert_capacity"])
        plan, aux = plan_tokens_choose(p, r["num_selected_experts"], C,
                                       r["batch_prioritized_routing"], cfg["dropless"])
    elif r["type"] == "experts_choose":
        plan, aux = plan_experts_choose(p, max(capacity(cf, T, E), cfg["min_expert_capacity"]))
    else:
        plan, aux = plan_top2(p, lingvo_capacity(cfg["expert_capacity_dim"], cf, T, E))
    flat = xg.reshape(G * T, H)
    y = torch.zeros_like(flat)
    for e in range(E):
        rows = [(g * T + t, wt) for g, t, ee, wt in plan if ee == e]
        if not rows:
            continue
        idx = torch.tensor([i for i, _ in rows])
        wts = torch.stack([wt for _, wt in rows])
        h = flat[idx] @ w["experts/intermediate/kernel"][e]
        if ex["use_bias"]:
            h = h + w["experts/intermediate/bias"][e]
        o = activation(ex["activation"], h) @ w["experts/output/kernel"][e]
        if ex["use_bias"]:
            o = o + w["experts/output/bias"][e]
        y = y.index_add(0, idx, o * wts.unsqueeze(-1))
    loss = r["load_balancing_loss_weight"] * aux + r["router_z_loss_weight"] * z
    return y.view(B, L, H), loss, {"load_balancing_loss": float(aux), "unscaled_router_z_loss":
                                   float(z)}


def gelu_ok():
    return math.isclose(float(nnf.gelu(torch.tensor(1.0))), 0.8413447, rel_tol=1e-6)
