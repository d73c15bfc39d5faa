"""The MoE layer from numpy: forward, backward, the routing metrics, and an SGD step written
straight into the engine's weights (parameters() are views, not copies).

    PYTHONPATH=build/python /usr/bin/python3 examples/numpy_layer.py    # or after pip install
"""
import numpy as np

import sparsemoe

layer = sparsemoe.MoeLayer({
    "hidden_size": 64,
    "experts": {"num_experts": 8, "d_ff": 256},
    "router": {"type": "tokens_choose", "num_selected_experts": 2,
               "load_balancing_loss_weight": 0.01},
    "train_capacity_factor": 1.25,
})
print(f"{layer.count_params()} parameters; kernels at {sparsemoe.simd()}")

rng = np.random.default_rng(0)
x = rng.normal(size=(4, 32, 64)).astype(np.float32)  # [B, L, H]
target = np.tanh(x)  # something for the layer to fit

for step in range(101):
    y, metrics = layer.forward(x, training=True, step=step)
    loss = float(((y - target) ** 2).sum(-1).mean())  # squared error per token
    layer.zero_grad()
    layer.backward(2 * (y - target) / (y.shape[0] * y.shape[1]))  # d loss/dy; routing loss added
    for name, w in layer.parameters().items():
        w -= 2.0 * layer.gradients()[name]       # in place: the engine's weights change
    if step % 20 == 0:
        print(f"step {step:2d}  loss {loss:.3f}  tokens per expert {metrics['tokens_per_expert']}  "
              f"dropped {metrics['fraction_tokens_left_behind']:.1%}")
