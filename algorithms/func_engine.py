"""The vectorised `func` engine: every algorithm as pure batched tensor functions.

No Python loop over tasks and no module cloning: parameters carry a leading ensemble
dimension [members, ...] and are expanded (as views) to [members, tasks, ...] for the
inner loop, so one autograd call adapts every task of every member (see
`algorithms.functional`). A single run is an ensemble of one; an ensemble trains several
runs (seeds, LR_base, LR_meta; same S and meta-batch) in one program, each with its own
parameters, task stream and Adam state. Members never interact: the summed loss has a
block-diagonal Jacobian, so each member's gradient is exactly its own.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch.utils.checkpoint import checkpoint

from algorithms.adam import StackedAdam
from algorithms.base import Adaptation, HyperParams, MetaLearner
from algorithms.functional import adapt, expand_per_task, sgd_step
from algorithms.network import make_network, task_losses
from algorithms.schedules import last_step_weights, msl_weights


class FuncLearner(MetaLearner):
    """Second-order MAML and its variants, switched by class attributes, not copies."""

    stacked_batches = True
    first_order = False
    multi_step_loss = False
    adapt_body = True  # False: ANIL (only the last layer adapts)
    learned_rates = False  # True: Meta-SGD

    def __init__(self, hp: HyperParams | Sequence[HyperParams], generator: torch.Generator | Sequence[torch.Generator],
                 device: str = "cpu", checkpoint_inner: bool = False):
        hps = list(hp) if isinstance(hp, (list, tuple)) else [hp]
        generators = list(generator) if isinstance(generator, (list, tuple)) else [generator]
        if len(hps) != len(generators):
            raise ValueError(f"{len(hps)} hyperparameter sets but {len(generators)} generators")
        shared = {(h.inner_steps, h.meta_batch, h.iterations, h.msl_anneal_iters) for h in hps}
        if len(shared) != 1:
            raise ValueError("ensemble members must share inner_steps, meta_batch, iterations and msl_anneal_iters; "
                             f"got {sorted(shared)}")
        super().__init__(hps[0], generators[0], device)
        self.hps = hps
        self.n_members = len(hps)
        self.checkpoint_inner = checkpoint_inner
        nets = [list(make_network(g, device=device).parameters()) for g in generators]
        self.params = [torch.stack([net[i].detach() for net in nets]).requires_grad_() for i in range(len(nets[0]))]
        self.lr_base = torch.tensor([h.lr_base for h in hps], device=self.device)
        self.lr_meta = torch.tensor([h.lr_meta for h in hps], device=self.device)
        self.rates = [torch.ones_like(p) * _per_member(self.lr_base, p).detach() for p in self.params]
        if self.learned_rates:
            self.rates = [r.requires_grad_() for r in self.rates]
        self.meta_parameters = self.params + (self.rates if self.learned_rates else [])

    def make_optimizer(self):
        return StackedAdam(self.meta_parameters, self.lr_meta)

    def step(self, batch, iteration: int = 0):
        if not hasattr(self, "optimizer"):
            self.optimizer = self.make_optimizer()
        loss, grads = self.meta_gradient(batch, iteration)
        self.optimizer.step(grads)
        return {"loss": loss}

    # -- the pure parts ---------------------------------------------------------------
    def inner_rates(self) -> list:
        """Per-parameter inner rates, shaped to broadcast over [members, tasks, ...]."""
        n_body = len(self.params) - 2
        rates = [r if self.learned_rates else _per_member(self.lr_base, p) for r, p in zip(self.rates, self.params)]
        rates = [r.unsqueeze(1) for r in rates]  # task dimension
        return rates if self.adapt_body else [None] * n_body + rates[n_body:]

    def loss_weights(self, iteration: int) -> list[float]:
        if self.multi_step_loss:
            return msl_weights(self.hp.inner_steps, iteration, self.hp.msl_anneal_iters or max(1, self.hp.iterations // 10))
        return last_step_weights(self.hp.inner_steps)

    def member_losses(self, batch, iteration: int = 0) -> torch.Tensor:
        """Meta-loss of each member [members]: weighted query losses over inner steps 0..S."""
        weights = self.loss_weights(iteration)
        n_tasks = batch.x_support.shape[-3]
        params = expand_per_task(self.params, n_tasks, lead=1)
        rates = self.inner_rates()
        loss = 0.0
        for s, w in enumerate(weights):
            if s > 0:
                params = self._inner_step(params, batch, rates)
            if w:
                loss = loss + w * task_losses(params, batch.x_query, batch.y_query).mean(-1)
        return loss

    def _inner_step(self, params, batch, rates):
        def step(*flat):
            return tuple(sgd_step(list(flat), task_losses(list(flat), batch.x_support, batch.y_support),
                                  rates, create_graph=not self.first_order))

        if self.checkpoint_inner and not self.first_order:
            return list(checkpoint(step, *params, use_reentrant=False))
        return list(step(*params))

    def meta_gradient(self, batch, iteration: int = 0):
        losses = self.member_losses(batch, iteration)
        grads = torch.autograd.grad(losses.sum(), self.meta_parameters)
        return losses.detach(), list(grads)

    def adaptation(self, member: int = 0) -> Adaptation:
        params = [p[member].detach() for p in self.params]
        rates = [r[member].detach() if self.learned_rates else float(self.lr_base[member]) for r in self.rates]
        n_body = len(params) - 2
        return Adaptation(params, rates if self.adapt_body else [None] * n_body + rates[n_body:])


def _per_member(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[members] -> [members, 1, ...] to broadcast against a stacked parameter."""
    return values.view(-1, *[1] * (like.dim() - 1))


class FuncMAML(FuncLearner):
    """Second-order MAML (Finn et al. 2017)."""


class FuncFOMAML(FuncLearner):
    """First-order MAML: inner gradients are treated as constants."""

    first_order = True


class FuncMSL(FuncLearner):
    """MAML++ multi-step loss (Antoniou et al. 2019)."""

    multi_step_loss = True


class FuncMetaSGD(FuncLearner):
    """Meta-SGD (Li et al. 2017): per-entry inner rates learned with the initialisation."""

    learned_rates = True


class FuncANIL(FuncLearner):
    """ANIL (Raghu et al. 2020): inner loop on the last layer only."""

    adapt_body = False


class FuncPretrain(FuncLearner):
    """Joint pre-training: one network regresses every task's support and query points."""

    def member_losses(self, batch, iteration: int = 0):
        x = torch.cat([batch.x_support, batch.x_query], dim=-2)
        y = torch.cat([batch.y_support, batch.y_query], dim=-2)
        params = [p.unsqueeze(1) for p in self.params]  # shared by all tasks
        return task_losses(params, x, y).mean(-1)


class FuncReptile(FuncLearner):
    """Reptile: S plain SGD steps per task, outer pseudo-gradient θ − mean_t(φ_t) into Adam."""

    first_order = True

    def meta_gradient(self, batch, iteration: int = 0):
        n_tasks = batch.x_support.shape[-3]
        theta = [p.detach() for p in self.params]
        with torch.enable_grad():
            per_task = [p.requires_grad_() for p in expand_per_task(theta, n_tasks, lead=1)]
            *_, phi = adapt(per_task, batch.x_support, batch.y_support, self.inner_rates(), self.hp.inner_steps,
                            create_graph=False)
        with torch.no_grad():
            losses = task_losses(phi, batch.x_query, batch.y_query).mean(-1)
            pseudo = [t - f.mean(1) for t, f in zip(theta, phi)]
        return losses, pseudo
