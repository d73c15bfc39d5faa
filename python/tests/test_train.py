"""sparsemoe.train and sparsemoe.load_run: a short training on a synthetic corpus from Python with
a progress callback, the run read back for evaluation and prediction, a callback that raises
stopping the run with a checkpoint that resumes to the same bytes, refusals, and the GIL released
while the engine computes."""
import os
import sys
import threading

import numpy as np
import pytest

import sparsemoe

WORDS = [s.split() for s in ("lion tiger wolf eagle shark horse",
                             "hammer saw drill wrench chisel pliers",
                             "bread apple cheese soup rice honey")]
LABELS = ["animal", "tool", "food"]
FILLER = "the a big small old with".split()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "corpus.tsv"
    with open(path, "w") as f:
        for i in range(400):
            label = (i * 7 + i // 3) % 3
            words = [WORDS[label][(i * 3 + w * 5) % 6] if (i + w) % 2 else
                     FILLER[(i + w * 7) % 6] for w in range(4 + i % 5)]
            f.write(LABELS[label] + "\t" + " ".join(words) + "\n")
    return str(path)


def config(corpus, steps=100):
    return {"model": {"hidden_size": 16, "num_layers": 3, "moe_layers": [1],
                      "attention_layers": [2], "num_attention_heads": 2,
                      "max_sequence_length": 12, "type_vocab_size": 2, "inner_dim": 32,
                      "moe": {"experts": {"num_experts": 4},
                              "router": {"type": "tokens_choose",
                                         "load_balancing_loss_weight": 0.01}}},
            "data": {"format": "tsv", "path": corpus}, "tokenizer": {"vocab_size": 60},
            "batch_size": 8,
            "pretrain": {"steps": steps, "optimizer": {"learning_rate": 0.003, "warmup_steps": 10}},
            "finetune": {"steps": steps, "optimizer": {"learning_rate": 0.01, "warmup_steps": 10}},
            "log_every": 10, "eval_every": 50, "eval_batches": 2, "checkpoint_every": 100}


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "full"
    records = []
    result = sparsemoe.train(config(corpus), out, progress=records.append)
    return out, result, records


def test_train_reports_progress_and_learns(trained):
    out, result, records = trained
    assert result["outcome"] == "finished" and result["step"] == 200
    assert result["test_accuracy"] > result["majority_accuracy"] + 0.2
    train_records = [r for r in records if r["event"] == "train"]
    assert [r["step"] for r in train_records] == list(range(10, 201, 10))
    assert any(r["event"] == "eval" for r in records)
    # The callback saw exactly what metrics.jsonl holds.
    with open(os.path.join(out, "metrics.jsonl")) as f:
        assert len(f.readlines()) == len(records)


def test_load_run_evaluates_and_predicts(trained):
    out, result, _ = trained
    run = sparsemoe.load_run(out)
    assert run.step == 200 and sorted(run.labels) == sorted(LABELS)
    assert run.config["model"]["hidden_size"] == 16
    ev = run.evaluate("test")
    assert ev["accuracy"] == pytest.approx(result["test_accuracy"])
    assert ev["confusion"].shape == (3, 3) and ev["confusion"].sum() == ev["examples"]
    p = run.predict_proba(["the lion and the wolf", "a hammer and a saw", "bread with honey"])
    assert p.dtype == np.float32 and p.shape == (3, 3)
    np.testing.assert_allclose(p.sum(axis=1), 1, rtol=1e-5)
    assert run.predict(["the lion and the wolf", ""]) == [run.labels[i] for i in
                                                          run.predict_proba(["the lion and the wolf", ""]).argmax(1)]
    with pytest.raises(ValueError, match="argument 'split'"):
        run.evaluate("validation")
    with pytest.raises(TypeError, match="argument 'texts'"):
        run.predict("one string")


def test_a_raising_callback_stops_with_a_checkpoint_that_resumes_bitwise(corpus, trained,
                                                                           tmp_path):
    full, _, _ = trained
    out = tmp_path / "split"

    def stop_at_60(record):
        if record.get("step", 0) >= 60:
            raise KeyError("enough")

    with pytest.raises(KeyError, match="enough"):
        sparsemoe.train(config(corpus), out, progress=stop_at_60)
    assert sparsemoe.load_run(out).step == 60
    assert sparsemoe.train(out=out, resume=True, stop_after_step=150)["outcome"] == "stopped"
    assert sparsemoe.train(out=out, resume=True)["outcome"] == "finished"
    assert sparsemoe.train(out=out, resume=True)["outcome"] == "already_finished"
    for name in ("checkpoint.safetensors", "results.json"):
        with open(os.path.join(full, name), "rb") as a, open(os.path.join(out, name), "rb") as b:
            assert a.read() == b.read(), name


def test_refusals(corpus, trained, tmp_path):
    full, _, _ = trained
    with pytest.raises(ValueError, match="argument 'out'"):
        sparsemoe.train(config(corpus))
    with pytest.raises(TypeError, match="argument 'config'"):
        sparsemoe.train(42, tmp_path / "a")
    with pytest.raises(ValueError, match="resume=True"):
        sparsemoe.train(config(corpus), tmp_path / "b", resume=True)
    bad = config(corpus)
    bad["pretrian"] = {}
    with pytest.raises(ValueError, match="pretrian"):
        sparsemoe.train(bad, tmp_path / "c")
    assert not os.path.exists(tmp_path / "c" / "checkpoint.safetensors")
    with pytest.raises(ValueError, match="already holds a run"):
        sparsemoe.train(config(corpus), full)
    with pytest.raises(Exception, match="config.json"):
        sparsemoe.load_run(tmp_path / "nothing")


def test_the_gil_is_released_while_the_engine_computes():
    # A Python thread counts while the main thread is inside one forward (4096 tokens, tens of ms).
    # With the GIL held for the call, the counter could run only in the few bytecodes around it
    # (the switch interval is made tiny so that no slice of 5 ms falls there).
    layer = sparsemoe.MoeLayer({"hidden_size": 256, "experts": {"num_experts": 8, "d_ff": 1024}})
    x = np.ones((8, 512, 256), np.float32)
    layer.forward(x)
    count, stop = [0], threading.Event()

    def counter():
        while not stop.is_set():
            count[0] += 1

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    t = threading.Thread(target=counter)
    t.start()
    try:
        while count[0] == 0:
            pass
        before = count[0]
        layer.forward(x)
        during = count[0] - before
    finally:
        stop.set()
        t.join()
        sys.setswitchinterval(old)
    assert during > 10000, during
