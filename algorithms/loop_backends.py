"""The reference backends: learn2learn, higher and plain torch, looping over tasks in Python.

They are what the field uses today, kept as close to each library's documented usage as
possible, and they define the numbers the vectorised `func` engine must reproduce.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from algorithms.base import Adaptation, HyperParams, MetaLearner
from algorithms.network import make_network
from algorithms.schedules import last_step_weights, msl_weights


class LoopLearner(MetaLearner):
    """Shared scaffolding: one network, meta-gradients accumulated task by task."""

    stacked_batches = False
    n_members = 1

    def __init__(self, hp: HyperParams, generator: torch.Generator, device: str = "cpu"):
        super().__init__(hp, generator, device)
        self.net = make_network(generator, device=device)
        self.meta_parameters = list(self.net.parameters())

    def loss_weights(self, iteration: int) -> list[float]:
        return last_step_weights(self.hp.inner_steps)

    def task_loss(self, batch, t: int, weights: list[float]) -> torch.Tensor:
        """Meta-loss of task t, differentiable with respect to the meta-parameters."""
        raise NotImplementedError

    def meta_gradient(self, batch, iteration: int = 0):
        weights = self.loss_weights(iteration)
        grads = [torch.zeros_like(p) for p in self.meta_parameters]
        total = torch.zeros((), device=self.device, dtype=self.meta_parameters[0].dtype)
        n = len(batch)
        for t in range(n):
            loss = self.task_loss(batch, t, weights) / n
            # Per-task backward frees each task's graph at once (as learn2learn's examples do).
            for acc, g in zip(grads, torch.autograd.grad(loss, self.meta_parameters, allow_unused=True)):
                if g is not None:
                    acc += g
            total += loss.detach()
        return total, grads

    def adaptation(self, member: int = 0) -> Adaptation:
        return Adaptation([p.detach() for p in self.net.parameters()], [self.hp.lr_base] * len(self.meta_parameters))


def _weighted_query_losses(learner, adapt_step, xs, ys, xq, yq, weights):
    """Σ_s w_s · query loss after s inner steps, skipping steps whose weight is 0."""
    loss = F.mse_loss(learner(xq), yq) * weights[0] if weights[0] else 0.0
    for s in range(1, len(weights)):
        adapt_step(F.mse_loss(learner(xs), ys))
        if weights[s]:
            loss = loss + weights[s] * F.mse_loss(learner(xq), yq)
    return loss


class L2LMAML(LoopLearner):
    """learn2learn's `MAML` wrapper: clone() per task, adapt(loss) per inner step."""

    first_order = False

    def __init__(self, hp, generator, device="cpu"):
        super().__init__(hp, generator, device)
        import learn2learn as l2l

        self.maml = l2l.algorithms.MAML(self.net, lr=hp.lr_base, first_order=self.first_order)

    def task_loss(self, batch, t, weights):
        learner = self.maml.clone()
        return _weighted_query_losses(learner, learner.adapt, batch.x_support[t], batch.y_support[t],
                                      batch.x_query[t], batch.y_query[t], weights)


class L2LFOMAML(L2LMAML):
    """First-order MAML: learn2learn's `MAML(first_order=True)`."""

    first_order = True


class L2LMSL(L2LMAML):
    """MAML++ multi-step loss on learn2learn: query losses after every inner step, annealed."""

    def loss_weights(self, iteration):
        anneal = self.hp.msl_anneal_iters or max(1, self.hp.iterations // 10)
        return msl_weights(self.hp.inner_steps, iteration, anneal)


class HigherMAML(LoopLearner):
    """higher's `innerloop_ctx` with a differentiable SGD, initial weights not copied."""

    def __init__(self, hp, generator, device="cpu"):
        super().__init__(hp, generator, device)
        self.inner_optimizer = torch.optim.SGD(self.net.parameters(), lr=hp.lr_base)

    def task_loss(self, batch, t, weights):
        import higher

        with higher.innerloop_ctx(self.net, self.inner_optimizer, copy_initial_weights=False) as (fnet, diffopt):
            return _weighted_query_losses(fnet, diffopt.step, batch.x_support[t], batch.y_support[t],
                                          batch.x_query[t], batch.y_query[t], weights)


class L2LMetaSGD(LoopLearner):
    """Meta-SGD (Li et al. 2017): learn2learn's `MetaSGD`, a learned rate per parameter entry."""

    def __init__(self, hp, generator, device="cpu"):
        super().__init__(hp, generator, device)
        import learn2learn as l2l

        self.metasgd = l2l.algorithms.MetaSGD(self.net, lr=hp.lr_base, first_order=False)
        self.meta_parameters = list(self.metasgd.parameters())  # network weights, then rates

    def task_loss(self, batch, t, weights):
        learner = self.metasgd.clone()
        return _weighted_query_losses(learner, learner.adapt, batch.x_support[t], batch.y_support[t],
                                      batch.x_query[t], batch.y_query[t], weights)

    def adaptation(self, member: int = 0) -> Adaptation:
        return Adaptation([p.detach() for p in self.net.parameters()], [lr.detach() for lr in self.metasgd.lrs])


class L2LANIL(LoopLearner):
    """ANIL (Raghu et al. 2020): the body is shared, only the last layer adapts (learn2learn MAML on the head)."""

    def __init__(self, hp, generator, device="cpu"):
        super().__init__(hp, generator, device)
        import learn2learn as l2l

        self.body, head = self.net[:-1], self.net[-1]
        self.head = l2l.algorithms.MAML(head, lr=hp.lr_base, first_order=False)

    def task_loss(self, batch, t, weights):
        learner = self.head.clone()
        features = self.body(torch.stack([batch.x_support[t], batch.x_query[t]]))
        return _weighted_query_losses(learner, learner.adapt, features[0], batch.y_support[t],
                                      features[1], batch.y_query[t], weights)

    def adaptation(self, member: int = 0) -> Adaptation:
        n_body = len(list(self.body.parameters()))
        lrs = [None] * n_body + [self.hp.lr_base] * (len(self.meta_parameters) - n_body)
        return Adaptation([p.detach() for p in self.net.parameters()], lrs)


class TorchPretrain(LoopLearner):
    """Joint pre-training baseline: regress every training task's points with one network.

    There is no inner loop in training; at meta-test time it is fine-tuned by the same
    shared evaluation as every other algorithm (SGD with LR_base on the support set).
    """

    def meta_gradient(self, batch, iteration: int = 0):
        x = torch.cat([batch.x_support, batch.x_query], dim=1)
        y = torch.cat([batch.y_support, batch.y_query], dim=1)
        loss = F.mse_loss(self.net(x), y)
        return loss.detach(), list(torch.autograd.grad(loss, self.meta_parameters))


class TorchReptile(LoopLearner):
    """Reptile (Nichol et al. 2018), task by task with plain autograd.

    Inner loop: S SGD steps with LR_base on the support set. The outer "gradient" is
    θ − mean_t(φ_t) and is handed to Adam with LR_meta, like every other algorithm's
    meta-gradient. The reported loss is the mean query loss after adaptation.
    """

    def meta_gradient(self, batch, iteration: int = 0):
        theta = [p.detach() for p in self.meta_parameters]
        pseudo = [torch.zeros_like(p) for p in theta]
        total = torch.zeros((), device=self.device)
        for t in range(len(batch)):
            phi = [p.clone().requires_grad_() for p in theta]
            for _ in range(self.hp.inner_steps):
                loss = F.mse_loss(torch.func.functional_call(self.net, dict(zip(self._names, phi)), batch.x_support[t]),
                                  batch.y_support[t])
                grads = torch.autograd.grad(loss, phi)
                phi = [(p - self.hp.lr_base * g).detach().requires_grad_() for p, g in zip(phi, grads)]
            with torch.no_grad():
                out = torch.func.functional_call(self.net, dict(zip(self._names, phi)), batch.x_query[t])
                total += F.mse_loss(out, batch.y_query[t]) / len(batch)
                for acc, p0, p in zip(pseudo, theta, phi):
                    acc += (p0 - p) / len(batch)
        return total, pseudo

    @property
    def _names(self):
        return [name for name, _ in self.net.named_parameters()]
