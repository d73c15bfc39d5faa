"""sparsemoe: sparsely-activated Mixture-of-Experts layers from numpy (and PyTorch, in
sparsemoe.torch), running on the C++ engine.

    import numpy as np, sparsemoe
    layer = sparsemoe.MoeLayer({"hidden_size": 16, "experts": {"num_experts": 4, "d_ff": 32},
                                "router": {"type": "tokens_choose", "num_selected_experts": 2}})
    y, metrics = layer.forward(np.ones((2, 8, 16), np.float32))
    dx = layer.backward(np.ones_like(y))

Arrays are float32 and C-contiguous; the engine reads inputs in place and writes outputs into new
arrays, and parameters() / gradients() are writable views of the engine's own buffers.
"""
import json as _json
import os as _os

from . import _core

__all__ = ["MoeLayer", "MoeLayerWithBackbone", "Run", "SparseMixer", "load_run", "presets",
           "route", "simd", "train"]


def _config_text(config):
    if isinstance(config, str):
        return config
    if isinstance(config, dict):
        return _json.dumps(config)
    raise TypeError(f"argument 'config': expected a dict or a JSON string, got "
                    f"{type(config).__name__}")


class _Engine:
    """What every engine object has: its config, and its weights and gradients as views."""
    _impl = None

    @property
    def config(self):
        """The full configuration, defaults filled in (a dict)."""
        return _json.loads(self._impl.config_json())

    def parameters(self):
        """name -> float32 array viewing the engine's weight (writes change the model)."""
        return self._impl.parameters()

    def gradients(self):
        """name -> float32 array viewing the engine's gradient buffer."""
        return self._impl.gradients()

    def zero_grad(self):
        self._impl.zero_grad()

    def count_params(self):
        return self._impl.count_params()


class _Layer(_Engine):
    _core_class = None

    def __init__(self, config=None):
        self._impl = self._core_class(_config_text({} if config is None else config))

    def forward(self, x, *, training=False, step=0, paddings=None, save_for_backward=True):
        """x [B, L, H] float32 -> (y [B, L, H], metrics dict). `training` selects jitter, dropout
        and the train capacity factor; `step` keys their random streams. save_for_backward=False
        is inference (like torch.no_grad): nothing is kept for a backward, which then raises."""
        return self._impl.forward(x, training, step, paddings, save_for_backward)

    __call__ = forward

    def backward(self, dy, *, loss_scale=1.0, accumulate=True):
        """dy [B, L, H] -> dx of the last forward; adds into the gradients (see zero_grad), with
        the routing losses' gradients scaled by loss_scale. accumulate=False writes the gradients
        instead, whatever the buffers held (like torch's zero_grad(set_to_none=True) before a
        backward, and faster: the weight gradients are not read first)."""
        return self._impl.backward(dy, loss_scale, accumulate)


class MoeLayer(_Layer):
    """The MoE layer (TF Model Garden's MoeLayer): router, routing policy, experts. Config keys as
    in docs/configuration.md (MoeLayerConfig)."""
    _core_class = _core.MoeLayer


class MoeLayerWithBackbone(_Layer):
    """A MoeLayer plus a dense FFN added to its output: {"moe": {...}, "backbone": {...}}."""
    _core_class = _core.MoeLayerWithBackbone


def presets():
    """The names of the model presets shipped with the engine (presets/*.json)."""
    return list(_core.preset_names())


class SparseMixer(_Engine):
    """The Sparse Mixer encoder (docs/sparse_mixer.md): token ids [B, L] -> sequence output
    [B, L, H] (or [B, output_range, H]), pooled output [B, H] and the MoE metrics.

        model = sparsemoe.SparseMixer("sparse_mixer_base", vocab_size=32000)
        seq, pooled, metrics = model.forward(ids, input_mask=mask)
        model.backward(dsequence=dseq, dpooled=dpool)   # adds into model.gradients()

    `config`: a preset name (see presets()), a dict or a JSON string (SparseMixerConfig);
    keyword arguments override top-level keys. The outputs are new arrays (the engine reuses its
    buffers); parameters() / gradients() are views of the engine's. backward() includes the MoE
    layers' routing losses (metrics["loss"])."""

    def __init__(self, config, **overrides):
        if isinstance(config, str) and config in _core.preset_names():
            cfg = _json.loads(_core.preset_json(config))
        elif isinstance(config, str):
            cfg = _json.loads(_config_text(config))
        elif isinstance(config, dict):
            cfg = dict(config)
        else:
            raise TypeError(f"argument 'config': expected a preset name, a dict or a JSON string, "
                            f"got {type(config).__name__}")
        cfg.update(overrides)
        self._impl = _core.SparseMixer(_json.dumps(cfg))

    def forward(self, input_word_ids, *, input_mask=None, input_type_ids=None, training=False,
                step=0, save_for_backward=True):
        """-> (sequence_output, pooled_output, metrics). save_for_backward=False is inference
        (like torch.no_grad): the same outputs, nothing kept for a backward, which then raises."""
        return self._impl.forward(input_word_ids, input_mask, input_type_ids, training, step,
                                  save_for_backward)

    __call__ = forward

    def backward(self, dsequence=None, dpooled=None):
        """Gradients of the last forward's outputs -> added into gradients()."""
        self._impl.backward(dsequence, dpooled)


def route(logits, router="tokens_choose", *, k=None, capacity=None, capacity_factor=None,
          batch_prioritized_routing=False, second_expert_policy="all",
          second_expert_threshold=0.0, legacy_mtf_behavior=True, expert_padding_idx=(),
          paddings=None, seed=None):
    """What a router does with these logits, as `sparsemoe route` answers it: logits [G, T, E]
    (float32) routed as in training. Give `capacity` C, or `capacity_factor` (default 1, the
    router's own capacity rule), not both; `k` defaults to the router's (1; 2 for top2); the
    top2 options are lingvo's; `paddings` [G, T] of 0/1; `seed` for the routers that draw.
    Returns a dict: capacity, dispatch and combine [G, T, E, C] (float32), aux_loss,
    router_z_loss (unscaled) and metrics."""
    if capacity is not None and capacity_factor is not None:
        raise ValueError("give either capacity or capacity_factor, not both")
    if capacity is not None and capacity < 0:
        raise ValueError(f"argument 'capacity': expected >= 0, got {capacity}")
    return _core.route(logits, router, -1 if k is None else int(k),
                       -1 if capacity is None else int(capacity),
                       1.0 if capacity_factor is None else float(capacity_factor),
                       bool(batch_prioritized_routing), second_expert_policy,
                       float(second_expert_threshold), bool(legacy_mtf_behavior),
                       [int(i) for i in expert_padding_idx], paddings, seed)


def simd():
    """The instruction-set level the engine's kernels run at, e.g. 'avx512 (x86-64-v4)'."""
    return _core.simd()


def train(config=None, out=None, *, progress=None, stop_after_step=0, resume=False,
          verbose=False):
    """Pretrain (masked LM) then fine-tune a Sparse Mixer into the run directory `out`, as
    `sparsemoe train` does (docs/training.md). `config`: a dict, a JSON string, or the path of a
    config file (relative corpus paths in a file are taken from the current directory, as on the
    command line). `progress(record)` is called with each metrics.jsonl record (training windows,
    evaluations); if it raises, training stops at the end of that step with a checkpoint and the
    exception propagates (so does Ctrl-C). `stop_after_step` > 0 checkpoints and stops there;
    `resume=True` continues the run in `out` (no config). Returns a dict: outcome ('finished',
    'stopped', 'interrupted', 'already_finished'), step, seconds, and the test accuracy and loss
    when finished."""
    if out is None:
        raise ValueError("argument 'out': the run directory is required")
    text, path = "", ""
    if resume:
        if config is not None:
            raise ValueError("argument 'config': resume=True continues with the run's own config")
    elif isinstance(config, dict):
        text = _json.dumps(config)
    elif isinstance(config, (str, _os.PathLike)) and not str(config).lstrip().startswith("{"):
        path = _os.fspath(config)
    elif isinstance(config, str):
        text = config
    else:
        raise TypeError(f"argument 'config': expected a dict, a JSON string or a path, got "
                        f"{type(config).__name__}")
    if progress is not None and not callable(progress):
        raise TypeError("argument 'progress': expected a callable")
    return _core.train(text, path, _os.fspath(out), progress, int(stop_after_step), bool(resume),
                       bool(verbose))


class Run:
    """A trained run directory read back: its config, label names and the model at its
    checkpoint."""

    def __init__(self, run_dir):
        self._impl = _core.Run(_os.fspath(run_dir))

    @property
    def config(self):
        return _json.loads(self._impl.config_json())

    @property
    def labels(self):
        return self._impl.labels

    @property
    def step(self):
        return self._impl.step

    def evaluate(self, split="test"):
        """Accuracy, loss, examples, the majority class's accuracy and the confusion matrix
        [C, C] (true x predicted) on the run's train, dev or test split."""
        return self._impl.evaluate(split)

    def predict_proba(self, texts):
        """Class probabilities [N, C] (float32) for a list of texts."""
        if isinstance(texts, str):
            raise TypeError("argument 'texts': expected a list of strings, got one string")
        return self._impl.predict_proba(list(texts))

    def predict(self, texts):
        """The most probable label of each text."""
        p = self.predict_proba(texts)
        return [self.labels[i] for i in p.argmax(axis=1)] if len(p) else []


def load_run(run_dir):
    """Reads a run directory written by train() or `sparsemoe train`."""
    return Run(run_dir)
