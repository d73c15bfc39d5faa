"""The engine's MoE layer inside a PyTorch model: a small Transformer-style block whose FFN is
sparsemoe.torch.MoeLayer, trained with a torch optimizer on a toy sequence task. The layer's
parameters are torch Parameters over the engine's buffers, its gradients arrive in .grad, and its
auxiliary (load-balancing) loss is added to the task loss.

    PYTHONPATH=build/python /usr/bin/python3 examples/torch_model.py
"""
import torch

import sparsemoe.torch

torch.manual_seed(0)
H, VOCAB, L = 32, 16, 12


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(VOCAB, H)
        self.norm = torch.nn.LayerNorm(H)
        self.moe = sparsemoe.torch.MoeLayer({
            "hidden_size": H,
            "experts": {"num_experts": 4, "d_ff": 64},
            "router": {"type": "tokens_choose", "num_selected_experts": 1,
                       "load_balancing_loss_weight": 0.01},
            "train_capacity_factor": 2.0,
        })
        self.head = torch.nn.Linear(H, VOCAB)

    def forward(self, tokens):
        h = self.embed(tokens)
        h = h + self.moe(self.norm(h))  # the engine's layer where a dense FFN would be
        return self.head(h)


model = Block()
opt = torch.optim.Adam(model.parameters(), lr=1e-2)
for step in range(201):
    tokens = torch.randint(0, VOCAB, (16, L))
    target = (tokens * 3 + 1) % VOCAB  # a per-token mapping the experts can learn
    logits = model(tokens)
    task = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), target.reshape(-1))
    opt.zero_grad()
    (task + model.moe.aux_loss).backward()
    opt.step()
    if step % 50 == 0:
        acc = (logits.argmax(-1) == target).float().mean()
        print(f"step {step:3d}  loss {float(task):.3f}  accuracy {float(acc):.0%}  "
              f"aux {float(model.moe.aux_loss):.4f}  "
              f"tokens per expert {model.moe.metrics['tokens_per_expert']}")
