"""sparsemoe.torch.MoeLayer inside PyTorch: the same numbers as the plain-PyTorch reference,
gradients in .grad, the auxiliary loss in the graph, finite differences through the module,
shared (not copied) parameters, and a small model with the engine's layer inside that learns."""
import numpy as np
import pytest
import torch

import sparsemoe.torch as smt
import torch_reference as ref
from test_layer import H, ROUTERS, config


def make(router="tokens_choose_k2", **extra):
    torch.manual_seed(0)
    layer = smt.MoeLayer(config(ROUTERS[router], **extra))
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.05)
    return layer


def reference(layer, x, dy, with_aux):
    w = {name.replace(".", "/"): p.detach().double().clone().requires_grad_()
         for name, p in layer.named_parameters()}
    xt = x.detach().double().requires_grad_()
    y, loss, _ = ref.moe_forward(layer.config, w, xt, training=layer.training)
    ((y * dy.double()).sum() + (loss if with_aux else 0)).backward()
    return y, loss, xt.grad, {k.replace("/", "."): v.grad for k, v in w.items()}


@pytest.mark.parametrize("router", ["tokens_choose_k1", "tokens_choose_k2", "experts_choose",
                                    "top2"])
@pytest.mark.parametrize("with_aux", [False, True])
def test_module_matches_pytorch(router, with_aux):
    layer = make(router)
    layer.eval()
    x = torch.randn(2, 8, H, requires_grad=True)
    dy = torch.randn(2, 8, H)
    y = layer(x)
    loss = (y * dy).sum() + (layer.aux_loss if with_aux else 0)
    loss.backward()
    y_ref, aux_ref, dx_ref, grads_ref = reference(layer, x, dy, with_aux)
    torch.testing.assert_close(y.double(), y_ref.detach(), rtol=1e-4, atol=2e-5)
    assert float(layer.aux_loss) == pytest.approx(float(aux_ref), rel=1e-4, abs=1e-8)
    torch.testing.assert_close(x.grad.double(), dx_ref, rtol=1e-4, atol=2e-5)
    for name, p in layer.named_parameters():
        torch.testing.assert_close(p.grad.double(), grads_ref[name], rtol=1e-4, atol=2e-5,
                                   msg=name)


def test_aux_loss_gradient_reaches_only_the_router():
    layer = make()
    x = torch.randn(2, 8, H)
    layer(x)
    layer.aux_loss.backward()
    grads = {n: p.grad for n, p in layer.named_parameters()}
    assert grads["router.router_weights.kernel"].abs().sum() > 0
    assert all(float(g.abs().sum()) == 0 for n, g in grads.items() if n.startswith("experts"))


def test_finite_differences_through_the_module():
    # Directional derivatives of L = sum(y * w) + aux_loss against central differences, for the
    # input and for each parameter (float32 engine; float64 sums).
    layer = make("tokens_choose_k2", dropless=True)
    layer.eval()
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 8, H, generator=gen, requires_grad=True)
    wy = torch.randn(2, 8, H, generator=gen)

    def loss_of(xx):
        with torch.no_grad():
            y = layer(xx)
            return float((y.double() * wy.double()).sum() + layer.aux_loss.double())

    y = layer(x)
    ((y * wy).sum() + layer.aux_loss).backward()
    eps = 1e-3  # small enough that no token changes experts (routing is piecewise constant)
    targets = [("x", x)] + list(layer.named_parameters())
    for name, t in targets:
        v = torch.randn(t.shape, generator=gen)
        analytic = float((t.grad.double() * v.double()).sum())
        with torch.no_grad():
            base = t.detach().clone()
            t.copy_(base + eps * v)
            plus = loss_of(x.detach())
            t.copy_(base - eps * v)
            minus = loss_of(x.detach())
            t.copy_(base)
        numeric = (plus - minus) / (2 * eps)
        assert numeric == pytest.approx(analytic, rel=2e-2, abs=2e-3), name


def test_parameters_share_the_engine_buffers():
    layer = make()
    x = torch.randn(2, 8, H)
    y0 = layer(x)
    engine = layer._engine.parameters()
    for name, p in layer.named_parameters():
        assert p.data_ptr() == engine[name.replace(".", "/")].ctypes.data, name
    with torch.no_grad():
        layer.experts.output.bias.add_(1.0)  # what an optimizer's step does
    assert not torch.allclose(y0, layer(x))


def test_zero_grad_set_to_none_and_accumulation():
    layer = make()
    x = torch.randn(2, 8, H)
    layer(x).sum().backward()
    once = {n: p.grad.clone() for n, p in layer.named_parameters()}
    layer(x).sum().backward()  # accumulates, as PyTorch does
    for n, p in layer.named_parameters():
        torch.testing.assert_close(p.grad, 2 * once[n], msg=n)
    layer.zero_grad(set_to_none=True)
    assert all(p.grad is None for p in layer.parameters())
    layer(x).sum().backward()  # every .grad None: the engine writes its gradients
    for n, p in layer.named_parameters():
        torch.testing.assert_close(p.grad, once[n], msg=n)
    written = {n: p.grad.clone() for n, p in layer.named_parameters()}
    layer.zero_grad(set_to_none=False)  # zeroed buffers: the engine adds into them
    layer(x).sum().backward()
    for n, p in layer.named_parameters():
        assert torch.equal(p.grad, written[n]), n


def test_two_calls_in_one_graph():
    # The second forward replaces the engine's activations; the first call's backward re-runs it.
    layer = make()
    a, b = torch.randn(2, 8, H), torch.randn(2, 8, H)
    (layer(a).sum() + 2 * layer(b).sum()).backward()
    both = {n: p.grad.clone() for n, p in layer.named_parameters()}
    layer.zero_grad()
    layer(a).sum().backward()
    (2 * layer(b)).sum().backward()
    for n, p in layer.named_parameters():
        torch.testing.assert_close(both[n], p.grad, rtol=1e-5, atol=1e-6, msg=n)


def test_bad_input_raises():
    layer = make()
    with pytest.raises(TypeError, match="argument 'x': expected dtype torch.float32"):
        layer(torch.zeros(2, 8, H, dtype=torch.float64))
    with pytest.raises(TypeError, match="argument 'x': expected a torch.Tensor"):
        layer(np.zeros((2, 8, H), np.float32))
    with pytest.raises(ValueError, match="H=16"):
        layer(torch.zeros(2, 8, H + 1))
    y = layer(torch.randn(2, 16, H)[:, ::2])  # not contiguous: taken as a contiguous copy
    assert y.shape == (2, 8, H)


def test_a_torch_model_with_the_engine_layer_learns():
    # Regression onto a fixed piecewise target: embedding -> our MoE layer (residual) -> head.
    torch.manual_seed(0)
    moe = smt.MoeLayer(config(ROUTERS["tokens_choose_k1"], train_capacity_factor=2.0))
    model = torch.nn.ModuleDict({"inp": torch.nn.Linear(4, H), "moe": moe,
                                 "out": torch.nn.Linear(H, 1)})
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(1)
    xs = torch.randn(64, 8, 4, generator=gen)
    target = torch.where(xs[..., :1] > 0, xs[..., 1:2] ** 2, -xs[..., 2:3]).squeeze(-1)

    def step():
        h = model["inp"](xs)
        pred = model["out"](h + model["moe"](h)).squeeze(-1)
        loss = ((pred - target) ** 2).mean()
        opt.zero_grad()
        (loss + moe.aux_loss).backward()
        opt.step()
        return float(loss)

    moe.train()
    first = step()
    for _ in range(300):
        last = step()
    assert last < 0.25 * first, (first, last)
    assert moe.step == 301  # every training forward drew new noise keys


def test_inference_path_and_moved_parameters():
    layer = make()
    layer.eval()
    x = torch.randn(2, 8, H)
    y = layer(x)
    aux = float(layer.aux_loss)
    with torch.no_grad():  # no autograd function: the same numbers
        y2 = layer(x)
    assert torch.equal(y, y2) and float(layer.aux_loss) == aux and not y2.requires_grad
    layer.double()  # the parameters leave the engine's buffers: refused, not silently wrong
    with pytest.raises(RuntimeError, match="must stay float32 on the CPU"):
        layer(x)
