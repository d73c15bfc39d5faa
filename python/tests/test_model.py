"""sparsemoe.SparseMixer from presets: outputs, finite-difference gradients through the whole
encoder (MoE routing losses included), parameter views, refusals."""
import numpy as np
import pytest

import sparsemoe


def test_presets_and_overrides():
    assert {"tiny", "sparse_mixer_base", "fast_sparse_mixer", "bert_base",
            "fnet_base"} <= set(sparsemoe.presets())
    m = sparsemoe.SparseMixer("tiny", vocab_size=100, num_layers=2, moe_layers=[1],
                              attention_layers=[0])
    assert m.config["vocab_size"] == 100 and m.config["num_layers"] == 2
    with pytest.raises(ValueError, match="unknown key"):
        sparsemoe.SparseMixer("tiny", no_such_key=1)
    with pytest.raises(TypeError, match="argument 'config'"):
        sparsemoe.SparseMixer(3)


def make(**kw):
    m = sparsemoe.SparseMixer("tiny", vocab_size=64, max_sequence_length=16, seed=3, **kw)
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 64, (2, 16))
    mask = np.ones((2, 16), np.int32)
    mask[1, 12:] = 0
    return m, ids, mask


def test_forward_shapes_determinism_and_dropout():
    m, ids, mask = make()
    seq, pooled, metrics = m.forward(ids, input_mask=mask)
    assert seq.shape == (2, 16, 64) and pooled.shape == (2, 64) and seq.dtype == np.float32
    assert set(metrics) >= {"total", "layer_1", "layer_2", "loss"}
    seq2, _, _ = m.forward(ids.astype(np.float32), input_mask=mask)  # float ids work too
    np.testing.assert_array_equal(seq, seq2)
    assert not np.shares_memory(seq, seq2)
    t0, _, _ = m.forward(ids, input_mask=mask, training=True, step=0)
    t1, _, _ = m.forward(ids, input_mask=mask, training=True, step=1)
    t0b, _, _ = m.forward(ids, input_mask=mask, training=True, step=0)
    assert not np.array_equal(t0, seq) and not np.array_equal(t0, t1)
    np.testing.assert_array_equal(t0, t0b)


def test_inference_without_saving_gives_the_same_outputs_and_refuses_a_backward():
    m, ids, mask = make()
    seq, pooled, _ = m.forward(ids, input_mask=mask)
    seq2, pooled2, _ = m.forward(ids, input_mask=mask, save_for_backward=False)
    np.testing.assert_array_equal(seq, seq2)
    np.testing.assert_array_equal(pooled, pooled2)
    with pytest.raises(ValueError, match="save_for_backward"):
        m.backward(dpooled=np.ones_like(pooled))
    m.forward(ids, input_mask=mask)  # a saving forward: the backward works again
    m.backward(dpooled=np.ones_like(pooled))


def test_finite_differences_through_the_encoder():
    # L = sum(seq * a) + sum(pooled * b) + routing loss, against central differences along a
    # random direction of several weights (float32 engine; eps small enough that no token
    # changes experts).
    m, ids, mask = make(moe={"experts": {"num_experts": 4},
                             "router": {"type": "tokens_choose",
                                        "load_balancing_loss_weight": 0.1,
                                        "router_z_loss_weight": 0.01},
                             "dropless": True})
    rng = np.random.default_rng(1)
    for name, w in m.parameters().items():  # routers far from ties: top-1 stays put under eps
        if "router_weights/kernel" in name:
            w *= 50
    seq, pooled, _ = m.forward(ids, input_mask=mask)
    a = rng.normal(size=seq.shape).astype(np.float32)
    b = rng.normal(size=pooled.shape).astype(np.float32)

    def loss():
        s, p, met = m.forward(ids, input_mask=mask)
        return float((s.astype(np.float64) * a).sum() + (p.astype(np.float64) * b).sum() +
                     met["loss"])

    m.zero_grad()
    m.forward(ids, input_mask=mask)
    m.backward(dsequence=a, dpooled=b)
    grads = {k: v.copy() for k, v in m.gradients().items()}
    params = m.parameters()
    names = [n for n in params if any(s in n for s in (
        "word_embeddings", "router_weights/kernel", "experts/intermediate/kernel", "pooler/kernel",
        "query/kernel"))]
    assert len(names) >= 5, sorted(params)
    eps = 1e-3
    for name in names:
        w = params[name]
        v = rng.normal(size=w.shape).astype(np.float32)
        base = w.copy()
        w[...] = base + eps * v
        plus = loss()
        w[...] = base - eps * v
        minus = loss()
        w[...] = base
        numeric = (plus - minus) / (2 * eps)
        analytic = float((grads[name].astype(np.float64) * v).sum())
        assert numeric == pytest.approx(analytic, rel=3e-2, abs=3e-3), name


def test_parameter_views_change_the_output():
    m, ids, mask = make()
    seq, _, _ = m.forward(ids, input_mask=mask)
    p = m.parameters()
    p[next(n for n in p if "pooler" in n and n.endswith("bias"))][...] += 1
    _, pooled2, _ = m.forward(ids, input_mask=mask)
    _, pooled1, _ = sparsemoe.SparseMixer("tiny", vocab_size=64, max_sequence_length=16,
                                          seed=3).forward(ids, input_mask=mask)
    assert not np.allclose(pooled1, pooled2)


def test_refusals():
    m, ids, mask = make()
    with pytest.raises(ValueError, match="call forward first"):
        m.backward(dpooled=np.zeros((2, 64), np.float32))
    with pytest.raises(TypeError, match="argument 'input_word_ids'"):
        m.forward(ids.astype(str))
    with pytest.raises(ValueError, match="argument 'input_word_ids': expected 2 dimensions"):
        m.forward(ids[0])
    bad = ids.copy()
    bad[0, 0] = 64
    with pytest.raises(ValueError, match="64"):
        m.forward(bad)
    m.forward(ids)
    with pytest.raises(ValueError, match="give dsequence, dpooled or both"):
        m.backward()
    with pytest.raises(ValueError, match="argument 'dpooled'"):
        m.backward(dpooled=np.zeros((3, 64), np.float32))
