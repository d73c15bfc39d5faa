"""sparsemoe.MoeLayer from numpy against the plain-PyTorch reference (torch_reference.py): forward,
routing losses, the input gradient and every weight gradient, for each router; zero-copy views;
bad input raising the right error."""
import gc

import numpy as np
import pytest
import torch

import sparsemoe
import torch_reference as ref

H, F, E = 16, 32, 4

ROUTERS = {
    "tokens_choose_k1": {"type": "tokens_choose", "num_selected_experts": 1},
    "tokens_choose_k2": {"type": "tokens_choose", "num_selected_experts": 2},
    "tokens_choose_k2_bpr": {"type": "tokens_choose", "num_selected_experts": 2,
                             "batch_prioritized_routing": True},
    "experts_choose": {"type": "experts_choose"},
    "top2": {"type": "top2"},
}


def config(router, **extra):
    # Weights large enough that activations leave gelu's linear part and routing is not uniform.
    r = dict(router, load_balancing_loss_weight=0.01, router_z_loss_weight=0.001,
             kernel_init_stddev=0.3)
    c = {"hidden_size": H, "experts": {"num_experts": E, "d_ff": F, "kernel_init_stddev": 0.3},
         "router": r, "seed": 7,
         "eval_capacity_factor": 1.0}
    c.update(extra)
    return c


def torch_weights(layer):
    return {k: torch.from_numpy(v.copy()).double().requires_grad_()
            for k, v in layer.parameters().items()}


def check_layer(cfg, B=3, L=8, seed=0):
    layer = sparsemoe.MoeLayer(cfg)
    # Biases start at zero; make them count.
    rng = np.random.default_rng(seed)
    for name, v in layer.parameters().items():
        if name.endswith("bias"):
            v[...] = rng.normal(0, 0.05, v.shape)
    x = rng.normal(0, 1, (B, L, H)).astype(np.float32)
    dy = rng.normal(0, 1, (B, L, H)).astype(np.float32)
    y, metrics = layer.forward(x)
    dx = layer.backward(dy)

    w = torch_weights(layer)
    xt = torch.from_numpy(x).double().requires_grad_()
    y_ref, loss, m_ref = ref.moe_forward(layer.config, w, xt)
    ((y_ref * torch.from_numpy(dy).double()).sum() + loss).backward()

    np.testing.assert_allclose(y, y_ref.detach().numpy(), rtol=1e-4, atol=2e-5)
    assert metrics["load_balancing_loss"] == pytest.approx(m_ref["load_balancing_loss"], rel=1e-4,
                                                           abs=1e-6)
    assert metrics["unscaled_router_z_loss"] == pytest.approx(m_ref["unscaled_router_z_loss"],
                                                              rel=1e-4)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-4, atol=2e-5)
    grads = layer.gradients()
    assert set(grads) == set(w)
    for name, g in grads.items():
        np.testing.assert_allclose(g, w[name].grad.numpy(), rtol=1e-4, atol=2e-5, err_msg=name)
    return layer, metrics


@pytest.mark.parametrize("router", sorted(ROUTERS))
def test_router_matches_pytorch(router):
    _, metrics = check_layer(config(ROUTERS[router]))
    assert sum(metrics["tokens_per_expert"]) > 0
    assert set(metrics) == {
        "load_balancing_loss", "router_z_loss", "unscaled_router_z_loss",
        "fraction_tokens_left_behind", "router_confidence", "expert_usage", "tokens_per_expert",
        "over_capacity_1_ratio", "over_capacity_2_ratio", "loss", "num_groups",
        "tokens_per_group", "expert_capacity"}
    assert metrics["loss"] == pytest.approx(0.01 * metrics["load_balancing_loss"] +
                                            metrics["router_z_loss"])
    assert metrics["router_z_loss"] == pytest.approx(0.001 * metrics["unscaled_router_z_loss"])


def test_dropless_matches_pytorch():
    _, metrics = check_layer(config(ROUTERS["tokens_choose_k2"], dropless=True))
    assert metrics["fraction_tokens_left_behind"] == 0


def test_capacity_drops_match_pytorch():
    # A small capacity factor drops tokens; the reference must drop the same ones.
    _, metrics = check_layer(config(ROUTERS["tokens_choose_k1"], eval_capacity_factor=0.5))
    assert metrics["fraction_tokens_left_behind"] > 0


def test_relu_experts_without_bias_match_pytorch():
    cfg = config(ROUTERS["tokens_choose_k2"])
    cfg["experts"].update(activation="relu", use_bias=False)
    check_layer(cfg)


def test_parameter_views_are_the_engine_weights():
    layer = sparsemoe.MoeLayer(config(ROUTERS["tokens_choose_k1"]))
    x = np.random.default_rng(1).normal(0, 1, (2, 8, H)).astype(np.float32)
    y0, _ = layer.forward(x)
    params = layer.parameters()
    params["experts/output/bias"][...] += 1.0  # every token's output moves by its weight
    y1, _ = layer.forward(x)
    assert not np.allclose(y0, y1)
    w = torch_weights(layer)
    y_ref, _, _ = ref.moe_forward(layer.config, w, torch.from_numpy(x).double())
    np.testing.assert_allclose(y1, y_ref.detach().numpy(), rtol=1e-4, atol=2e-5)
    # Views share memory with each other and keep the layer alive after it is dropped.
    again = layer.parameters()["experts/output/bias"]
    assert np.shares_memory(again, params["experts/output/bias"])
    kernel = params["router/router_weights/kernel"]
    del layer, params, again
    gc.collect()
    assert np.isfinite(kernel).all() and kernel.flags.writeable


def test_gradients_accumulate_until_zero_grad():
    layer = sparsemoe.MoeLayer(config(ROUTERS["tokens_choose_k2"]))
    x = np.random.default_rng(2).normal(0, 1, (2, 8, H)).astype(np.float32)
    y, _ = layer.forward(x)
    layer.backward(np.ones_like(y))
    once = {k: v.copy() for k, v in layer.gradients().items()}
    layer.forward(x)
    layer.backward(np.ones_like(y))
    for k, v in layer.gradients().items():
        np.testing.assert_allclose(v, 2 * once[k], rtol=1e-5, atol=1e-7, err_msg=k)
    layer.zero_grad()
    assert all(not v.any() for v in layer.gradients().values())


def test_backward_without_accumulating_writes_the_gradients():
    # accumulate=False: whatever the buffers held, they end as zero_grad() then backward leaves
    # them, bit for bit.
    for name in ("tokens_choose_k2", "experts_choose"):
        written = sparsemoe.MoeLayer(config(ROUTERS[name]))
        summed = sparsemoe.MoeLayer(config(ROUTERS[name]))
        x = np.random.default_rng(4).normal(0, 1, (2, 8, H)).astype(np.float32)
        dy = np.random.default_rng(5).normal(0, 1, (2, 8, H)).astype(np.float32)
        for v in written.gradients().values():
            v[...] = np.nan
        written.forward(x, training=True, step=1)
        dx_w = written.backward(dy, accumulate=False)
        summed.zero_grad()
        summed.forward(x, training=True, step=1)
        dx_s = summed.backward(dy)
        np.testing.assert_array_equal(dx_w, dx_s)
        got, want = written.gradients(), summed.gradients()
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=f"{name} {k}")


def test_outputs_are_new_arrays_and_inputs_unchanged():
    layer = sparsemoe.MoeLayer(config(ROUTERS["experts_choose"]))
    x = np.random.default_rng(3).normal(0, 1, (2, 8, H)).astype(np.float32)
    keep = x.copy()
    y1, _ = layer.forward(x)
    y2, _ = layer.forward(x)
    assert not np.shares_memory(y1, y2) and y1.flags.owndata
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_array_equal(x, keep)


def test_bad_input_raises_naming_the_argument():
    layer = sparsemoe.MoeLayer(config(ROUTERS["tokens_choose_k1"]))
    x = np.zeros((2, 8, H), np.float32)
    with pytest.raises(TypeError, match="argument 'x': expected dtype float32, got float64"):
        layer.forward(x.astype(np.float64))
    with pytest.raises(TypeError, match="argument 'x': expected a numpy.ndarray"):
        layer.forward(x.tolist())
    with pytest.raises(ValueError, match="argument 'x': expected a C-contiguous array"):
        layer.forward(np.zeros((2, 16, H), np.float32)[:, ::2])
    with pytest.raises(ValueError, match="H=16"):
        layer.forward(np.zeros((2, 8, H + 1), np.float32))
    with pytest.raises(ValueError, match="expected 3 dimensions"):
        layer.forward(np.zeros((8, H), np.float32))
    with pytest.raises(ValueError, match="call forward first"):
        layer.backward(x)
    y, _ = layer.forward(x)
    with pytest.raises(ValueError, match="argument 'dy': expected shape \\[2, 8, 16\\]"):
        layer.backward(np.zeros((1, 8, H), np.float32))
    with pytest.raises(TypeError, match="argument 'dy'"):
        layer.backward(y.astype(np.float16))
    layer.backward(y)  # the layer still works after the refusals


def test_bad_config_raises_value_error():
    with pytest.raises(ValueError, match="unknown key"):
        sparsemoe.MoeLayer({"hidden_size": 8, "no_such_key": 1})
    with pytest.raises(ValueError, match="router type"):
        sparsemoe.MoeLayer({"router": {"type": "nope"}})
    with pytest.raises(ValueError, match="not valid JSON"):
        sparsemoe.MoeLayer("{")
    with pytest.raises(TypeError, match="argument 'config'"):
        sparsemoe.MoeLayer(3)


def test_with_backbone_adds_a_dense_ffn():
    cfg = {"moe": config(ROUTERS["tokens_choose_k1"]), "backbone": {"d_ff": 24}}
    layer = sparsemoe.MoeLayerWithBackbone(cfg)
    x = np.random.default_rng(4).normal(0, 1, (2, 8, H)).astype(np.float32)
    y, _ = layer.forward(x)
    w = torch_weights(layer)
    moe_w = {k[len("moe/"):]: v for k, v in w.items() if k.startswith("moe/")}
    xt = torch.from_numpy(x).double()
    y_moe, _, _ = ref.moe_forward(layer.config["moe"], moe_w, xt)
    bb = {k[len("backbone/"):]: v for k, v in w.items() if k.startswith("backbone/")}
    assert bb, sorted(w)
    np.testing.assert_allclose(y - y_moe.detach().numpy(), dense_ffn(bb, xt), rtol=1e-4, atol=3e-5)


def test_inference_without_saving_gives_the_same_output_and_refuses_a_backward():
    cfg = {"moe": config(ROUTERS["tokens_choose_k1"]), "backbone": {"d_ff": 24}}
    layer = sparsemoe.MoeLayerWithBackbone(cfg)
    x = np.random.default_rng(5).normal(0, 1, (2, 8, H)).astype(np.float32)
    y, _ = layer.forward(x)
    y2, _ = layer.forward(x, save_for_backward=False)
    np.testing.assert_array_equal(y, y2)
    with pytest.raises(ValueError, match="save_for_backward"):
        layer.backward(np.ones_like(y))
    layer.forward(x)
    assert layer.backward(np.ones_like(y)).shape == x.shape


def dense_ffn(w, x):
    names = sorted(w)
    k1 = next(n for n in names if n.startswith("intermediate") and n.endswith("kernel"))
    k2 = next(n for n in names if n.startswith("output") and n.endswith("kernel"))
    h = x @ w[k1] + w[k1.replace("kernel", "bias")]
    return (ref.activation("gelu", h) @ w[k2] + w[k2.replace("kernel", "bias")]).detach().numpy()


def test_simd_names_the_level():
    assert sparsemoe.simd().split()[0] in {"baseline", "avx2", "avx512"}


def test_threads_sharing_a_layer_take_turns():
    # The GIL is released during compute, so two Python threads could run one layer (one
    # activation record) at once; the bindings serialise calls per object. Each thread's output
    # and input gradient must be those of a layer run alone.
    import threading
    cfg = config(ROUTERS["tokens_choose_k2"])
    rng = np.random.default_rng(7)
    xs = [rng.normal(0, 1, (4, 64, H)).astype(np.float32) for _ in range(2)]
    alone = sparsemoe.MoeLayer(cfg)
    want = []
    for x in xs:
        y, _ = alone.forward(x)
        want.append(y)
    shared = sparsemoe.MoeLayer(cfg)
    bad = []

    def work(i):
        for _ in range(30):
            y, _ = shared.forward(xs[i])
            if not np.array_equal(y, want[i]):
                bad.append(i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not bad
