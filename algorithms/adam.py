"""Adam as a pure update on stacked parameters, with a learning rate per ensemble member.

torch.optim.Adam takes one scalar rate per parameter group, but an ensemble stores all its
members in one tensor per parameter ([members, ...]) so that one program trains them all;
each member needs its own LR_meta. The arithmetic below is torch's single-tensor Adam
(same operation order, the step size folded into the numerator), which the tests check
against `torch.optim.Adam`.

The state is one [members, P] tensor per moment (P: all parameters' entries), so a step is
a handful of ops whatever the number of parameter tensors. When the parameters are views
of one [members, P] buffer in the same order (as `FuncLearner` lays them out) the update is
applied to that buffer in one op too.
"""
from __future__ import annotations

import torch


def flat_base(params: list[torch.Tensor]) -> torch.Tensor | None:
    """The [members, P] buffer that `params` tile in order, or None if they don't."""
    base = params[0]._base
    if base is None or base.dim() != 2 or any(p._base is not base for p in params):
        return None
    offset = 0
    for p in params:
        if p.storage_offset() != offset or p[0].numel() * base.shape[0] != p.numel():
            return None
        offset += p[0].numel()
    return base if offset == base.shape[1] and base.is_contiguous() else None


class StackedAdam:
    def __init__(self, params: list[torch.Tensor], lr: torch.Tensor, betas=(0.9, 0.999), eps: float = 1e-8):
        self.params = params
        self.lr = lr  # [members]
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.step_count = 0
        self.members = lr.shape[0]
        self.flat = flat_base(params)
        self.sizes = [p[0].numel() for p in params]
        zeros = params[0].new_zeros(self.members, sum(self.sizes))
        self.m, self.v = zeros, zeros.clone()
        # per-parameter views of the state, in the parameters' shapes
        self.exp_avg = [s.view(p.shape) for s, p in zip(self.m.split(self.sizes, 1), params)]
        self.exp_avg_sq = [s.view(p.shape) for s, p in zip(self.v.split(self.sizes, 1), params)]

    def advance(self) -> tuple[float, float]:
        """Count one more step; its bias corrections (1 − β1ᵗ, √(1 − β2ᵗ)) in float64."""
        self.step_count += 1
        return 1 - self.beta1 ** self.step_count, (1 - self.beta2 ** self.step_count) ** 0.5

    @torch.no_grad()
    def step(self, grads: list[torch.Tensor]) -> None:
        bias1, bias2_sqrt = self.advance()
        if self.flat is not None:
            self.update(self.flat, self.m, self.v, grads, bias1, bias2_sqrt)
            return
        update, denom = self.update(None, self.m, self.v, grads, bias1, bias2_sqrt)
        for p, u, d in zip(self.params, update.split(self.sizes, 1), denom.split(self.sizes, 1)):
            p.addcdiv_(u.view(p.shape), d.view(p.shape), value=-1)

    def update(self, flat, m, v, grads, bias1, bias2_sqrt):
        """The update on state tensors given as arguments (the compiled step passes its own, traced,
        with the bias corrections as 0-dim tensors): m, v and `flat` (the parameters' [members, P]
        buffer) in place; with `flat` None, returns (numerator, denominator) instead."""
        g = torch.cat([g.reshape(self.members, -1) for g in grads], 1)
        m.lerp_(g, 1 - self.beta1)
        v.mul_(self.beta2).addcmul_(g, g, value=1 - self.beta2)
        step_size = (self.lr / bias1).view(-1, 1)
        denom = (v.sqrt() / bias2_sqrt).add_(self.eps)
        update = m * step_size
        if flat is None:
            return update, denom
        flat.addcdiv_(update, denom, value=-1)
        return None
