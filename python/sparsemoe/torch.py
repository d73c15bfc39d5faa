"""sparsemoe.torch: the engine's MoE layer as a torch.nn.Module, so that a PyTorch model can swap
its MoE layer for ours.

    import torch, sparsemoe.torch
    moe = sparsemoe.torch.MoeLayer({"hidden_size": 64, "experts": {"num_experts": 8, "d_ff": 128}})
    y = moe(x)                      # x [B, L, H] float32 on the CPU
    loss = task_loss(y) + moe.aux_loss
    loss.backward()                 # gradients land in the parameters' .grad

The parameters are torch tensors over the engine's own buffers (no copies: an optimizer's
in-place update is the engine's update), named as the engine names them with dots
(router.router_weights.kernel, experts.intermediate.kernel, ...). After each forward,
`aux_loss` is the routing loss the config weights (load balancing and router z-loss) as a
0-dimensional tensor in the graph: add it to the loss to train the router with it, leave it out
and its gradient is not applied. `metrics` is the engine's metrics dict of that forward.

The engine keeps the activations of the last forward. A backward of an earlier forward of the same
module (the module called twice in one graph) re-runs that forward first, which gives the same
activations bit for bit (the same input, training flag and step), so any graph works; it costs
one more forward.
"""
import torch

from . import MoeLayer as _NumpyMoeLayer
from . import MoeLayerWithBackbone as _NumpyMoeLayerWithBackbone

__all__ = ["MoeLayer", "MoeLayerWithBackbone"]


def _as_input(x, name):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"argument '{name}': expected a torch.Tensor, got {type(x).__name__}")
    if x.dtype != torch.float32:
        raise TypeError(f"argument '{name}': expected dtype torch.float32, got {x.dtype}")
    if x.device.type != "cpu":
        raise ValueError(f"argument '{name}': expected a CPU tensor, got device {x.device}")
    return x.detach().contiguous().numpy()


class _EngineFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, module, x, *params):
        y, metrics, call = module._run_forward(x)
        ctx.module, ctx.call = module, call
        ctx.save_for_backward(x)
        ctx.training, ctx.step = module._last_training, module._last_step
        aux = torch.scalar_tensor(metrics["loss"])
        module.__dict__["metrics"] = metrics
        return y, aux

    @staticmethod
    def backward(ctx, dy, daux):
        module = ctx.module
        (x,) = ctx.saved_tensors
        if module._call != ctx.call:  # another forward ran since: restore this one's activations
            module._engine.forward(_as_input(x, "x"), training=ctx.training, step=ctx.step)
            module._call = ctx.call
        fresh = module._attach_grads()
        dx = module._engine.backward(_as_input(dy, "dy"), loss_scale=float(daux),
                                     accumulate=not fresh)
        return (None, torch.from_numpy(dx) if ctx.needs_input_grad[1] else None,
                *([None] * len(module._params)))


class _EngineModule(torch.nn.Module):
    _numpy_class = None

    def __init__(self, config=None):
        super().__init__()
        self._engine = self._numpy_class(config)
        self._params = []  # (parameter, engine gradient view)
        grads = self._engine.gradients()
        for name, value in self._engine.parameters().items():
            p = torch.nn.Parameter(torch.from_numpy(value))
            owner = self
            *path, leaf = name.split("/")
            for part in path:
                if not hasattr(owner, part):
                    owner.add_module(part, torch.nn.Module())
                owner = getattr(owner, part)
            owner.register_parameter(leaf, p)
            self._params.append((p, torch.from_numpy(grads[name])))
        self._param_list = [p for p, _ in self._params]
        # Where each parameter's storage sits relative to its gradient buffer: the check that the
        # parameters are still the engine's buffers (float32 on the CPU) is one comparison each.
        self._grad_offset = {id(p): g.data_ptr() - p.data_ptr() for p, g in self._params}
        self.step = 0  # keys dropout and jitter; advanced by every training forward
        self._call = 0
        self.metrics = None
        self.aux_loss = None

    @property
    def config(self):
        return self._engine.config

    def _run_forward(self, x, save=True):
        # Bookkeeping goes through __dict__: nn.Module.__setattr__ costs a microsecond a field.
        state = self.__dict__
        for p, g in self._params:
            if p.data_ptr() != g.data_ptr() - self._grad_offset[id(p)]:
                raise RuntimeError("sparsemoe.torch: the parameters must stay float32 on the CPU "
                                   "(they are the engine's buffers)")
        training, step = self.training, state["step"]
        state["_last_training"], state["_last_step"] = training, step
        y, metrics = self._engine._impl.forward(_as_input(x, "x"), training, step, None, save)
        if training:
            state["step"] = step + 1
        state["_call"] += 1
        return torch.from_numpy(y), metrics, state["_call"]

    def _attach_grads(self):
        # .grad is the engine's gradient buffer, so its backward adds straight into it. A .grad set
        # to None (zero_grad) or replaced since is brought back onto the buffer first. When every
        # .grad is None (torch's zero_grad default), the backward writes the buffers instead of
        # zeroing and adding: returns True then.
        if all(p.grad is None for p, _ in self._params):
            for p, g in self._params:
                p.grad = g
            return True
        for p, g in self._params:
            if p.grad is None:
                g.zero_()
            elif p.grad.data_ptr() != g.data_ptr():
                g.copy_(p.grad)
            else:
                continue
            p.grad = g
        return False

    def forward(self, x):
        if not torch.is_grad_enabled():  # inference: no graph, no autograd function
            y, metrics, _ = self._run_forward(x, save=False)
            self.__dict__["metrics"] = metrics
            self.__dict__["aux_loss"] = torch.scalar_tensor(metrics["loss"])
            return y
        y, aux = _EngineFunction.apply(self, x, *self._param_list)
        self.__dict__["aux_loss"] = aux
        return y


class MoeLayer(_EngineModule):
    """The engine's MoeLayer (config as for sparsemoe.MoeLayer): x [B, L, H] -> y [B, L, H]."""
    _numpy_class = _NumpyMoeLayer


class MoeLayerWithBackbone(_EngineModule):
    """The engine's MoeLayerWithBackbone: y = backbone(x) + moe(x)."""
    _numpy_class = _NumpyMoeLayerWithBackbone
