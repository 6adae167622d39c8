"""Adam as a pure update on stacked parameters, with a learning rate per ensemble member.

torch.optim.Adam takes one scalar rate per parameter group, but an ensemble stores all its
members in one tensor per parameter ([members, ...]) so that one program trains them all;
each member needs its own LR_meta. The arithmetic below is torch's single-tensor Adam
(same operation order), which the tests check against `torch.optim.Adam`.
"""
from __future__ import annotations

import torch


class StackedAdam:
    def __init__(self, params: list[torch.Tensor], lr: torch.Tensor, betas=(0.9, 0.999), eps: float = 1e-8):
        self.params = params
        self.lr = lr  # [members]
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.step_count = 0
        self.exp_avg = [torch.zeros_like(p) for p in params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in params]

    @torch.no_grad()
    def step(self, grads: list[torch.Tensor]) -> None:
        self.step_count += 1
        bias1 = 1 - self.beta1 ** self.step_count
        bias2_sqrt = (1 - self.beta2 ** self.step_count) ** 0.5
        for p, g, m, v in zip(self.params, grads, self.exp_avg, self.exp_avg_sq):
            m.lerp_(g, 1 - self.beta1)
            v.mul_(self.beta2).addcmul_(g, g, value=1 - self.beta2)
            step_size = (self.lr / bias1).view(-1, *[1] * (p.dim() - 1))
            denom = (v.sqrt() / bias2_sqrt).add_(self.eps)
            p.addcdiv_(m * step_size, denom, value=-1)
