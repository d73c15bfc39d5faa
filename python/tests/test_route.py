"""sparsemoe.route against the known answers of the spec's worked examples (peer cases D1, D2)
and against `sparsemoe route` on the same requests; refusals."""
import json
import os
import subprocess

import numpy as np
import pytest

import sparsemoe

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
PROBS = np.array([[[0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.5, 0.4, 0.1], [0.8, 0.15, 0.05]]],
                 np.float32)


def peer_case(case_id):
    with open(os.path.join(ROOT, "tests", "data", "peer_cases.json")) as f:
        return next(c for c in json.load(f)["cases"] if c["id"] == case_id)


def nonzero(combine):
    return {f"t{t},e{e},c{c}": float(combine[0, t, e, c])
            for t, e, c in zip(*np.nonzero(combine[0]))}


@pytest.mark.parametrize("bpr", [True, False])
def test_tokens_choose_worked_example(bpr):
    want = peer_case("D1")["expected"]["bpr_true" if bpr else "bpr_false"]
    r = sparsemoe.route(np.log(PROBS), "tokens_choose", k=2, capacity=2,
                        batch_prioritized_routing=bpr)
    assert r["capacity"] == 2 and r["dispatch"].shape == (1, 4, 3, 2)
    got = nonzero(r["combine"])
    assert got.keys() == want["combine_nonzero"].keys()
    for key, v in want["combine_nonzero"].items():
        assert got[key] == pytest.approx(v, abs=1e-6), key
    np.testing.assert_array_equal(r["dispatch"], (r["combine"] != 0).astype(np.float32))
    assert r["aux_loss"] == pytest.approx(want["auxiliary_loss"], abs=1e-5)
    for name in ("fraction_tokens_left_behind", "expert_usage", "router_confidence"):
        assert r["metrics"][name] == pytest.approx(want[name], abs=1e-6), name


@pytest.mark.parametrize("legacy", [True, False])
def test_top2_worked_example(legacy):
    want = peer_case("D2")["expected"]["legacy_true" if legacy else "legacy_false"]
    r = sparsemoe.route(np.log(PROBS), "top2", capacity=2, legacy_mtf_behavior=legacy)
    got = nonzero(r["combine"])
    assert got.keys() == want["combine_nonzero"].keys()
    for key, v in want["combine_nonzero"].items():
        assert got[key] == pytest.approx(v, abs=1e-6), key
    assert r["aux_loss"] == pytest.approx(want["aux_loss"], abs=1e-5)
    assert "over_capacity_1_ratio" in r["metrics"]


@pytest.mark.parametrize("request_", [
    {"router": "experts_choose", "capacity_factor": 2.0},
    {"router": "tokens_choose", "k": 2, "batch_prioritized_routing": True},
    {"router": "top2", "second_expert_policy": "random", "seed": 11},
])
def test_same_answer_as_the_command_line(request_):
    logits = np.random.default_rng(3).normal(0, 2, (2, 6, 4)).astype(np.float32)
    cli = os.environ.get("SPARSEMOE_CLI", os.path.join(ROOT, "build", "sparsemoe"))
    req = dict(request_, logits=logits.tolist())
    answer = json.loads(subprocess.run([cli, "route"], input=json.dumps(req), text=True,
                                       capture_output=True, check=True).stdout)
    kw = {k: v for k, v in request_.items() if k != "router"}
    r = sparsemoe.route(logits, request_["router"], **kw)
    assert r["capacity"] == answer["capacity"]
    np.testing.assert_array_equal(r["dispatch"], np.array(answer["dispatch"], np.float32))
    np.testing.assert_allclose(r["combine"], np.array(answer["combine"], np.float32), rtol=1e-6)
    assert r["aux_loss"] == pytest.approx(answer["aux_loss"])
    assert r["metrics"]["tokens_per_expert"] == answer["metrics"]["tokens_per_expert"]


def test_refusals():
    logits = np.zeros((1, 4, 3), np.float32)
    with pytest.raises(TypeError, match="argument 'logits': expected dtype float32"):
        sparsemoe.route(logits.astype(np.float64))
    with pytest.raises(ValueError, match="expected 3 dimensions"):
        sparsemoe.route(logits[0])
    with pytest.raises(ValueError, match="not both"):
        sparsemoe.route(logits, capacity=1, capacity_factor=1.0)
    with pytest.raises(ValueError, match="router type"):
        sparsemoe.route(logits, "nope")
    with pytest.raises(ValueError, match="draws nothing"):
        sparsemoe.route(logits, "tokens_choose", seed=1)
    bad = logits.copy()
    bad[0, 2, 1] = np.inf
    with pytest.raises(ValueError, match=r"non-finite value at \[0, 2, 1\]"):
        sparsemoe.route(bad)
    with pytest.raises(ValueError, match="argument 'paddings'"):
        sparsemoe.route(logits, "top2", paddings=np.zeros((1, 5), np.float32))
    with pytest.raises(ValueError, match="num_selected_experts"):
        sparsemoe.route(logits, "tokens_choose", k=0)
