"""A pack's model: K members of one architecture as stacked weights run by one template module
(torch.func.functional_call), and SGD over the stacked weights with a learning rate, momentum
and weight decay per member.

Imports torch and stetune's models and quantizers only (not the trainer, whose spec layer needs
YAML and SciPy), so `python -m stetune.bench_pack` runs where only PyTorch and NumPy are.

Two ways to run the forward and backward passes, chosen by measurement (stetune.bench_pack):
- fused (CUDA): torch.vmap over the members, i.e. HFTA's horizontal fusion through vmap's
  batching rules (grouped convolutions, BatchNorm over the members' channels side by side,
  batched matmuls): few, large kernels, where a GPU has the room. Float sums are reordered.
- sequential (CPU): each member's forward and backward in turn, on its slices of the stacked
  weights. Measured on CPU (LeNet-5, K=8, one thread), vmap lost 25-60% to separate runs: a
  grouped convolution is 2-4x slower than its K plain ones, BatchNorm's backward 2x slower on
  channel-folded data, and K members' activations side by side leave the cache that one
  member's fit in. In turn, each member computes bit for bit what train() does.
Either way the SGD update, gradient norms and metric sums are batched over the members.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from .quant import QuantAct

__all__ = ["PackError", "PackedModel", "StackedSGD", "pack_step", "default_fused", "check_alphas"]


class PackError(ValueError):
    """Runs that cannot share a pack (different cells, or features a pack does not support)."""


def default_fused(device) -> bool:
    return torch.device(device).type == "cuda"


class _Elementwise(torch.autograd.Function):
    """An STE applied under vmap to the whole physical (all members) tensor: quantizers are
    elementwise, so this is exact, and needs no batching rule for their in-place clamp."""

    @staticmethod
    def forward(x, fn, alpha, levels):
        return fn.forward(x, alpha, levels)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("_Elementwise must be applied under torch.vmap, but got a plain call")

    @staticmethod
    def vmap(info, in_dims, x, fn, alpha, levels):
        return fn.apply(x, alpha, levels), in_dims[0]


def _act_forward(self: QuantAct, x: torch.Tensor) -> torch.Tensor:
    # the fused template's quantizer. _pack_alpha: a float when every member shares it (train()'s
    # own path), else each member's 0-d tensor through sigma_a(x) = a * sigma_1(x / a)
    a, top = self._pack_alpha, self._pack_top
    if self._pack_sat is not None:  # evaluation: inputs above the top level, as QuantAct counts
        self._pack_sat = self._pack_sat + (x > top).sum()
        self._pack_seen += x.numel()  # under vmap: one member's count
    if isinstance(a, float):
        return _Elementwise.apply(x, self.fn, a, self.levels)
    return _Elementwise.apply(x / a, self.fn, 1.0, self.levels) * a


class PackedModel:
    """K members as stacked tensors plus one template module that functional_call runs.

    `models` are the members as built (weights, BN statistics, each QuantAct's alpha); the first
    becomes the fused mode's template. Fused members whose quantizers differ in alpha run
    a * sigma_1(x / a): for a scale-equivariant STE (all built-in ones: mu_a(x) = a mu_1(x / a))
    that is the same quantizer and the same proxy gradient up to rounding, and check_alphas
    refuses a pack whose STE is not. Sequential members run their own alpha exactly."""

    def __init__(self, models: list[nn.Module], fused: bool, device):
        self.template, self.fused, self.device = models[0], fused, torch.device(device)
        first = models[0]
        self.params = {n: torch.stack([dict(m.named_parameters())[n].detach() for m in models])
                       .to(self.device) for n, _ in first.named_parameters()}
        self.buffers = {n: torch.stack([dict(m.named_buffers())[n] for m in models]).to(self.device)
                        for n, _ in first.named_buffers()}
        self.keys = list(first.state_dict())  # the plain state_dict's names, in its order
        self.acts = [(n, m) for n, m in first.named_modules() if isinstance(m, QuantAct)]
        # alpha and top level of every member's every quantizer, as the members hold them
        self.alpha = [[m.get_submodule(n).alpha for n, _ in self.acts] for m in models]
        self.top = [[m.get_submodule(n).top for n, _ in self.acts] for m in models]
        check_alphas(self.acts, self.alpha)
        if fused:  # one template run by functional_call; its quantizers take per-member alphas
            self.members = []
            for _, act in self.acts:
                act.forward = _act_forward.__get__(act)
                act._pack_sat = None
        else:  # each member its own module, its weights and buffers views of the stacks
            self.members = [m.to(self.device) for m in models]
            self._bind()

    def _bind(self) -> None:
        """Point every member module's parameters and buffers at its slices of the stacks, so
        that the batched SGD update is what each module computes with (sequential mode)."""
        self._member_params = []
        for k, m in enumerate(self.members):
            for n, p in self.params.items():
                owner, _, leaf = n.rpartition(".")
                m.get_submodule(owner)._parameters[leaf] = nn.Parameter(p[k])
            for n, b in self.buffers.items():
                owner, _, leaf = n.rpartition(".")
                m.get_submodule(owner)._buffers[leaf] = b[k]
            self._member_params.append([m.get_parameter(n) for n in self.params])

    def __len__(self) -> int:
        return len(self.alpha)

    def select(self, keep: list[int]) -> None:
        """Keep only members `keep` (in that order): a member that left costs nothing after."""
        idx = torch.tensor(keep, dtype=torch.long, device=self.device)  # [] too: all left
        self.params = {n: p[idx] for n, p in self.params.items()}
        self.buffers = {n: b[idx] for n, b in self.buffers.items()}
        self.alpha = [self.alpha[k] for k in keep]
        self.top = [self.top[k] for k in keep]
        if not self.fused:
            self.members = [self.members[k] for k in keep]
            self._bind()

    def load(self, params: dict, buffers: dict) -> None:
        """Stacked weights and buffers from a checkpoint, for the members selected."""
        self.params = {n: p.to(self.device) for n, p in params.items()}
        self.buffers = {n: b.to(self.device) for n, b in buffers.items()}
        if not self.fused:
            self._bind()

    def member_state(self, k: int) -> dict:
        """Member k's plain state_dict (on the CPU), loadable into the model it came from."""
        both = {**self.params, **self.buffers}
        return {n: both[n][k].detach().cpu().clone() for n in self.keys}

    # -- per-member quantizer settings ---------------------------------------------------------
    def _set_member(self, k: int) -> None:
        for j, (_, act) in enumerate(self.acts):
            act._pack_alpha, act._pack_top = self.alpha[k][j], self.top[k][j]

    def _vmap_alphas(self):
        """(alphas, tops) as (K, acts) tensors for vmap, or (None, None) where every member
        shares them (and _set_member(0) has set the floats)."""
        self._set_member(0)
        if all(row == self.alpha[0] for row in self.alpha):
            return None, None
        return (torch.tensor(self.alpha, device=self.device),
                torch.tensor(self.top, device=self.device))  # float32, as x > top compares

    def _vcall(self, p, b, a, top, x):
        if a is not None:
            for j, (_, act) in enumerate(self.acts):
                act._pack_alpha, act._pack_top = a[j], top[j]
        return functional_call(self.template, (p, b), (x,), strict=True)

    # -- training ----------------------------------------------------------------------------
    def grads(self, x: torch.Tensor, y: torch.Tensor, skip: list[bool] | None = None):
        """Forward and backward of every member on its batch (x (K, B, ...), y (K, B)):
        (loss, correct, grad norm) each (K,), and the gradients stacked like the parameters.
        Members in `skip` (frozen) are not run where that saves work (sequential)."""
        if self.fused:
            self.template.train()
            return self._fused_grads(x, y)
        losses, corrects, norms, grads = [], [], [], [[] for _ in self.params]
        for k in range(len(self)):
            if skip is not None and skip[k]:  # its values are masked out: zeros will do
                losses.append(x.new_zeros(()))
                corrects.append(torch.zeros((), dtype=torch.long, device=x.device))
                norms.append(x.new_zeros(()))
                for lst, p in zip(grads, self.params.values()):
                    lst.append(torch.zeros_like(p[k]))
                continue
            model, params = self.members[k], self._member_params[k]
            out = model(x[k])  # train()'s kernels at train()'s shapes
            loss = F.cross_entropy(out, y[k])
            g = torch.autograd.grad(loss, params, allow_unused=True)  # member k's alone
            g = [torch.zeros_like(p) if gi is None else gi for gi, p in zip(g, params)]
            losses.append(loss.detach())
            corrects.append((out.argmax(1) == y[k]).sum())
            norms.append(torch.nn.utils.get_total_norm(g))
            for lst, gi in zip(grads, g):
                lst.append(gi)
        return (torch.stack(losses), torch.stack(corrects), torch.stack(norms),
                [torch.stack(lst) for lst in grads])

    def _fused_grads(self, x, y):
        leaves = {n: p.detach().requires_grad_() for n, p in self.params.items()}

        def member(p, b, a, top, x, y):
            out = self._vcall(p, b, a, top, x)
            return F.cross_entropy(out, y), (out.argmax(1) == y).sum()

        a, top = self._vmap_alphas()
        dims = (0, 0, None if a is None else 0, None if top is None else 0, 0, 0)
        loss, correct = torch.vmap(member, in_dims=dims)(leaves, self.buffers, a, top, x, y)
        g = torch.autograd.grad(loss.sum(), list(leaves.values()), allow_unused=True)  # d sum/d p_k
        g = [torch.zeros_like(p) if gi is None else gi for gi, p in zip(g, leaves.values())]
        norms = torch.stack([torch.linalg.vector_norm(gi.flatten(1), dim=1) for gi in g], 1)
        return loss.detach(), correct, torch.linalg.vector_norm(norms, dim=1), g

    # -- evaluation --------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate_chunk(self, x: torch.Tensor, y: torch.Tensor, shared: bool):
        """Eval mode: (loss sum, correct) each (K,), saturated counts (K, acts) and inputs seen
        per member per act; x is (K, N, ...), or one (N, ...) for every member when `shared`."""
        if not self.fused:
            return self._sequential_eval(x, y, shared)
        self.template.eval()
        for _, act in self.acts:
            act._pack_sat, act._pack_seen = 0, 0
        try:
            loss, correct, sats = self._fused_eval(x, y, shared)
            seen = [act._pack_seen for _, act in self.acts]
        finally:
            for _, act in self.acts:
                act._pack_sat = None
            self.template.train()
        return loss, correct, sats, seen

    def _sats(self, counts, like: torch.Tensor) -> torch.Tensor:
        zero = like.new_zeros((), dtype=torch.long)
        return torch.stack([s if torch.is_tensor(s) else zero for s in counts]) if counts else \
            like.new_zeros(0, dtype=torch.long)

    def _sequential_eval(self, x, y, shared):
        """train()'s evaluate per member (QuantAct's own saturation counts), no sync."""
        loss, correct, sats, seen = [], [], [], []
        for k, model in enumerate(self.members):
            acts = [model.get_submodule(n) for n, _ in self.acts]
            model.eval()
            for act in acts:
                act.track_saturation = True
                act.reset_saturation()
            xk, yk = (x, y) if shared else (x[k], y[k])
            out = model(xk)
            loss.append(F.cross_entropy(out, yk, reduction="sum"))
            correct.append((out.argmax(1) == yk).sum())
            sats.append(self._sats([act._sat for act in acts], out))
            seen = [act._seen for act in acts]
            for act in acts:
                act.track_saturation = False
            model.train()
        return torch.stack(loss), torch.stack(correct), torch.stack(sats), seen

    def _fused_eval(self, x, y, shared):
        def member(p, b, a, top, x, y):
            out = self._vcall(p, b, a, top, x)
            return (F.cross_entropy(out, y, reduction="sum"), (out.argmax(1) == y).sum(),
                    self._sats([act._pack_sat for _, act in self.acts], out))

        a, top = self._vmap_alphas()
        d = None if shared else 0
        dims = (0, 0, None if a is None else 0, None if top is None else 0, d, d)
        return torch.vmap(member, in_dims=dims)(self.params, self.buffers, a, top, x, y)


def check_alphas(acts, alpha: list[list[float]]) -> None:
    """Members with different alphas need a scale-equivariant STE (fused: see PackedModel):
    probe it on a grid (points below 0, inside each level, above the top) rather than trust its
    name, so that a pack works on the CPU exactly where it would on a GPU."""
    for j, (name, act) in enumerate(acts):
        values = sorted({row[j] for row in alpha})
        if len(values) < 2:
            continue
        for a in values:
            x = ((torch.arange(-2, 2 * act.levels + 4, dtype=torch.float64) + 0.5) * (a / 2))
            x = x.float().requires_grad_()
            y1 = act.fn.apply(x, a, act.levels)
            g1, = torch.autograd.grad(y1.sum(), x)
            y2 = act.fn.apply(x / a, 1.0, act.levels) * a
            g2, = torch.autograd.grad(y2.sum(), x)
            if not (torch.allclose(y1, y2) and torch.allclose(g1, g2)):
                raise PackError(f"members of a pack with different alpha must use a "
                                f"scale-equivariant STE, but got ste={act.ste!r} at {name} "
                                f"(alpha={values})")


class StackedSGD:
    """torch.optim.SGD (dampening 0, no Nesterov) over stacked weights, each member with its own
    lr, momentum and weight decay: d = g + wd p; buf = m buf + d (buf = d at the first step);
    p -= lr buf. addcmul rounds like SGD's add(alpha=) (one fused multiply-add) and the momentum
    like its mul_ then add_, so on CPU the update is SGD's bit for bit; buffers start at 0,
    where m * 0 + d = d exactly, as SGD's first-step copy."""

    def __init__(self, params: dict, lr: list[float], momentum: list[float],
                 weight_decay: list[float]):
        self.momentum_buffer = {n: torch.zeros_like(p) for n, p in params.items()}
        self.device = next(iter(params.values())).device
        self.set_hyper(lr, momentum, weight_decay)

    def set_hyper(self, lr, momentum, weight_decay) -> None:
        def vec(v):
            return torch.tensor(v, dtype=torch.float32, device=self.device)

        self.neg_lr, self.m, self.wd = vec([-x for x in lr]), vec(momentum), vec(weight_decay)

    def select(self, keep: list[int]) -> None:
        idx = torch.tensor(keep, dtype=torch.long, device=self.device)  # [] too: all left
        self.momentum_buffer = {n: b[idx] for n, b in self.momentum_buffer.items()}

    @torch.no_grad()
    def step(self, params: dict, grads: list[torch.Tensor], frozen: torch.Tensor | None = None):
        """Update `params` in place; members where `frozen` (bool (K,)) keep weights and buffer
        (torch.where, not a multiply: a diverged member's NaN times 0 is still NaN)."""
        for (n, p), g in zip(params.items(), grads):
            shape = (-1,) + (1,) * (p.dim() - 1)
            buf = self.momentum_buffer[n]
            d = g.addcmul_(p, self.wd.view(shape))  # the gradient is ours to overwrite
            if frozen is None:
                buf.mul_(self.m.view(shape)).add_(d)  # SGD's own two ops, two roundings
                p.addcmul_(buf, self.neg_lr.view(shape))
                continue
            new_buf = buf * self.m.view(shape) + d
            new_p = torch.addcmul(p, new_buf, self.neg_lr.view(shape))
            keep = frozen.view(shape)
            buf.copy_(torch.where(keep, buf, new_buf))
            p.copy_(torch.where(keep, p, new_p))


def pack_step(model: PackedModel, opt: StackedSGD, x: torch.Tensor, y: torch.Tensor,
              frozen: torch.Tensor | None = None):
    """One SGD step of every member: (loss, correct, grad norm), each (K,) on the device, no
    sync (sequential: one a step while a member is frozen). Frozen members' weights, momentum
    and BN statistics stay as they were."""
    saved = skip = None
    if frozen is not None:
        saved = {n: b.clone() for n, b in model.buffers.items()}
        skip = None if model.fused else frozen.tolist()
    loss, correct, gnorm, grads = model.grads(x, y, skip)
    opt.step(model.params, grads, frozen)
    if saved is not None:
        with torch.no_grad():
            for n, b in model.buffers.items():
                b.copy_(torch.where(frozen.view((-1,) + (1,) * (b.dim() - 1)), saved[n], b))
    return loss, correct, gnorm
