"""The reference backends: learn2learn, higher and plain torch, looping over tasks in Python.

They are what the field uses today, kept as close to each library's documented usage as
possible, and they define the numbers the vectorised `func` engine must reproduce.

Every learner trains with its task's loss (`problem`, `tasks.problem`; default MSE through
`F.mse_loss`, as always): the rule loop, learn2learn and higher take any loss, because they only
differentiate what they are handed; so do Reptile and pre-training (MSE through `F.mse_loss` as
before, bitwise). A loop learner written for MSE only sets `mse_only` and is refused another
problem (`problem_refusal`).
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import io
import sys

import torch
import torch.nn.functional as F

from algorithms.base import Adaptation, HyperParams, MetaLearner, mse_only_refusal
from algorithms.generic_engine import PRETRAIN_POINTS, PretrainPoints, problem_network
from algorithms.network import NetworkSpec, as_spec, parameter_names, with_context
from algorithms.rules import (InnerRule, adapted_mask, apply_update, check_no_python_state, context_width, has_context,
                              has_state, rule_adaptation, rule_context)
from tasks.problem import Problem, problem_of, refuse_unless_mse


def _gym_notice() -> str | None:
    """The deprecation notice gym prints for its installed version (from `gym_notices`), or None."""
    try:
        from gym_notices.notices import notices

        return notices.get(importlib.metadata.version("gym"))
    except (ImportError, importlib.metadata.PackageNotFoundError):
        return None


def import_gym_quietly() -> None:
    """Import gym (learn2learn imports it) without its four-line deprecation notice on stderr, a
    print rather than a warning, which would land in a notebook or inside progress bars. Only that
    exact text is dropped: anything else gym prints is passed on and its errors propagate; a missing
    gym is left for the import of learn2learn to report."""
    if "gym" in sys.modules:
        return
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            import gym  # noqa: F401
    except ImportError:
        pass
    finally:
        text, notice = captured.getvalue(), _gym_notice()
        sys.stderr.write(text.replace(notice + "\n", "", 1) if notice else text)


class LoopLearner(MetaLearner):
    """Shared scaffolding: one network, meta-gradients accumulated task by task.

    `rule` (a class attribute, bound per algorithm by the registry) is the algorithm's
    declaration; the subclasses run it through a library's own machinery.
    """

    stacked_batches = False
    n_members = 1
    engine = "loop"
    rule: InnerRule = InnerRule()
    mse_only = False  # written for MSE: refuses another task loss

    @classmethod
    def problem_refusal(cls, problem):
        return mse_only_refusal(problem, f"{cls.__name__} (backend {cls.engine!r})") if cls.mse_only else None

    def __init__(self, hp: HyperParams, generator: torch.Generator, device: str = "cpu", network=None,
                 problem: Problem | None = None, init: str = "torch"):
        super().__init__(hp, generator, device)
        self.network = as_spec(network)
        self.problem = problem_of(problem)
        if self.mse_only:
            refuse_unless_mse(self.problem, f"{type(self).__name__} (backend {self.engine!r})")
        self.net = problem_network(generator, self.network, self.problem, device=device,
                                   extra_inputs=context_width(self.rule, hp), init=init)
        self.meta_parameters = list(self.net.parameters())

    def task_loss_of(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One task's loss of the network's output: `F.mse_loss` for MSE (shapes checked first:
        it would broadcast [N, 2] against [N, 1]), else the problem's."""
        if not self.problem.is_mse:
            return self.problem.task_losses(out, y)
        self.problem.check_shapes(out, y)
        return F.mse_loss(out, y)

    def double(self) -> "LoopLearner":
        for module in (self.net, *self._modules()):
            module.double()
        self.meta_parameters = self._meta_parameters()
        return self

    def _modules(self) -> tuple:
        return ()

    def _meta_parameters(self) -> list[torch.Tensor]:
        return list(self.net.parameters())

    def loss_weights(self, iteration: int) -> list[float]:
        return self.rule.loss_weights(self.hp, iteration)

    def task_loss(self, batch, t: int, weights: list[float]) -> torch.Tensor:
        """Meta-loss of task t, differentiable with respect to the meta-parameters."""
        raise NotImplementedError

    def meta_gradient(self, batch, iteration: int = 0):
        if isinstance(self.network, NetworkSpec):  # sized from the problem (a plug-in network sizes itself)
            self.problem.check_inputs(batch.x_support)
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
        adapted = adapted_mask(self.rule, [name for name, _ in self.net.named_parameters()])
        return Adaptation([p.detach() for p in self.net.parameters()],
                          [self.hp.lr_base if a else None for a in adapted], network=self.network)


def _weighted_query_losses(learner, adapt_step, xs, ys, xq, yq, weights, loss_of):
    """Σ_s w_s · `loss_of`(query) after s inner steps, skipping steps whose weight is 0."""
    loss = loss_of(learner(xq), yq) * weights[0] if weights[0] else 0.0
    for s in range(1, len(weights)):
        adapt_step(loss_of(learner(xs), ys))
        if weights[s]:
            loss = loss + weights[s] * loss_of(learner(xq), yq)
    return loss


class TorchRuleLearner(LoopLearner):
    """Any declared rule with plain autograd, task by task: the reference every engine is held to.

    Per task: S inner steps, each the support loss's gradient (`create_graph` unless the rule
    is first-order) handed to the rule's `update` with its extra meta-parameters.
    """

    engine = "loop"

    def __init__(self, hp, generator, device="cpu", network=None, problem=None, init="torch"):
        super().__init__(hp, generator, device, network, problem, init)
        self.names = [name for name, _ in self.net.named_parameters()]
        self.adapted = adapted_mask(self.rule, self.names)
        params = [p.detach() for p in self.net.parameters()]
        params += rule_context(self.rule, hp, params[0])
        if not any(self.adapted) and len(params) == len(self.names):
            raise ValueError(f"{self.rule!r} adapts no parameter and has no context: nothing to adapt")
        self.extra = [e.detach().clone().requires_grad_() for e in self.rule.extra(params, hp)]
        self.meta_parameters = self._meta_parameters()

    def _meta_parameters(self):
        return list(self.net.parameters()) + list(self.extra)

    def double(self):
        self.net.double()
        self.extra = [e.detach().double().requires_grad_() for e in self.extra]
        self.meta_parameters = self._meta_parameters()
        return self

    def _loss(self, params, x, y):
        """One task's loss (MSE by default); `params` past the network's are the rule's context vectors."""
        x = with_context(x, params[len(self.names):])
        return self.task_loss_of(torch.func.functional_call(self.net, dict(zip(self.names, params)), (x,)), y)

    def task_loss(self, batch, t, weights):
        xs, ys, xq, yq = (v[t] for v in (batch.x_support, batch.y_support, batch.x_query, batch.y_query))
        params = list(self.net.parameters())
        contexts = [c.requires_grad_() for c in rule_context(self.rule, self.hp, params[0])]  # reset for every task
        params += contexts
        adapted = [i for i, a in enumerate(self.adapted + [True] * len(contexts)) if a]
        extra = list(self.extra)
        state = list(self.rule.init_state(params, extra, self.hp))
        loss = 0.0
        for s, weight in enumerate(weights):
            if s > 0:
                found = torch.autograd.grad(self._loss(params, xs, ys), [params[i] for i in adapted],
                                            create_graph=not self.rule.first_order)
                grads: list = [None] * len(params)
                for i, g in zip(adapted, found):
                    grads[i] = g
                before = dict(vars(self.rule))
                params, state = apply_update(self.rule, params, grads, extra, s - 1, self.hp, state)
                check_no_python_state(self.rule, before)
            if weight:
                loss = loss + weight * self._loss(params, xq, yq)
        return loss

    def adaptation(self, member: int = 0) -> Adaptation:
        return rule_adaptation(self.rule, self.net, self.extra, self.hp, self.network)


def _head_only(names) -> list[bool]:
    """The parameters of the last module (learn2learn's head, `net[-1]`)."""
    last = names[-1].rpartition(".")[0]
    return [name.rpartition(".")[0] == last for name in names]


class L2LLearner(LoopLearner):
    """learn2learn, as its documentation uses it: `MAML` (clone() per task, adapt(loss) per
    inner step; `first_order` from the rule), `MetaSGD` for learned per-entry rates, and `MAML`
    on the head alone for ANIL (the body runs once per task, shared)."""

    engine = "learn2learn"

    @classmethod
    def covers(cls, rule):
        return rule.fast_update in ("sgd", "per-entry")

    @classmethod
    def refusal(cls, rule, network):
        if has_state(rule) or has_context(rule):
            return "learn2learn's MAML/MetaSGD have no inner-optimiser state or context"
        names = parameter_names(network)
        mask = adapted_mask(rule, names)
        if all(mask) or (rule.fast_update == "sgd" and mask == _head_only(names)
                         and isinstance(as_spec(network), NetworkSpec)):  # the head split needs nn.Sequential
            return None
        adapted = [n for n, a in zip(names, mask) if a]
        if rule.fast_update == "sgd" and mask == _head_only(names):
            return (f"learn2learn's head-only MAML here splits an nn.Sequential; network {as_spec(network).name!r} "
                    "is not one")
        return (f"learn2learn adapts every parameter or ({'MAML' if rule.fast_update == 'sgd' else 'not for MetaSGD'}) "
                f"the last module's, but the rule adapts {adapted or 'none'} of {list(names)}")

    def __init__(self, hp, generator, device="cpu", network=None, problem=None, init="torch"):
        super().__init__(hp, generator, device, network, problem, init)
        import_gym_quietly()
        import learn2learn as l2l

        rule = self.rule
        if rule.fast_update == "per-entry":
            self.wrapper = l2l.algorithms.MetaSGD(self.net, lr=hp.lr_base, first_order=rule.first_order)
            self.body = None
        elif not all(adapted_mask(rule, parameter_names(self.network))):  # the head (`refusal` checked it)
            self.body, head = self.net[:-1], self.net[-1]
            self.wrapper = l2l.algorithms.MAML(head, lr=hp.lr_base, first_order=rule.first_order)
        else:
            self.wrapper = l2l.algorithms.MAML(self.net, lr=hp.lr_base, first_order=rule.first_order)
            self.body = None
        self.meta_parameters = self._meta_parameters()

    def _modules(self):
        return (self.wrapper,)

    def _meta_parameters(self):
        if self.rule.fast_update == "per-entry":
            return list(self.wrapper.parameters())  # network weights, then rates
        return list(self.net.parameters())

    def task_loss(self, batch, t, weights):
        learner = self.wrapper.clone()
        xs, xq = batch.x_support[t], batch.x_query[t]
        if self.body is not None:
            # one body call on support and query alike (their sizes may differ: K and the query size)
            xs, xq = self.body(torch.cat([xs, xq])).split([len(xs), len(xq)])
        return _weighted_query_losses(learner, learner.adapt, xs, batch.y_support[t], xq, batch.y_query[t], weights,
                                      self.task_loss_of)

    def adaptation(self, member: int = 0) -> Adaptation:
        if self.rule.fast_update == "per-entry":
            return Adaptation([p.detach() for p in self.net.parameters()], [lr.detach() for lr in self.wrapper.lrs],
                              network=self.network)
        return super().adaptation(member)


class HigherLearner(LoopLearner):
    """higher's `innerloop_ctx` with a differentiable SGD, initial weights not copied (second-order
    SGD on every layer: the rule's loss weights apply)."""

    engine = "higher"

    @classmethod
    def covers(cls, rule):
        plain_weights = type(rule).loss_weights is InnerRule.loss_weights  # what the examples here use
        return rule.fast_update == "sgd" and not rule.first_order and plain_weights

    @classmethod
    def refusal(cls, rule, network):
        if has_state(rule) or has_context(rule):
            return "higher's differentiable SGD here has no inner-optimiser state or context"
        names = parameter_names(network)
        mask = adapted_mask(rule, names)
        if not all(mask):
            adapted = [n for n, a in zip(names, mask) if a]
            return f"higher adapts every parameter, but the rule adapts {adapted or 'none'}"
        return None

    def __init__(self, hp, generator, device="cpu", network=None, problem=None, init="torch"):
        super().__init__(hp, generator, device, network, problem, init)
        self.inner_optimizer = torch.optim.SGD(self.net.parameters(), lr=hp.lr_base)

    def task_loss(self, batch, t, weights):
        import higher

        with higher.innerloop_ctx(self.net, self.inner_optimizer, copy_initial_weights=False) as (fnet, diffopt):
            return _weighted_query_losses(fnet, diffopt.step, batch.x_support[t], batch.y_support[t],
                                          batch.x_query[t], batch.y_query[t], weights, self.task_loss_of)


class TorchPretrain(PretrainPoints, LoopLearner):
    """Joint pre-training baseline: fit every training task's points (or its support points only:
    `pretrain_points`) with one network, with the task's loss (the mean over tasks of each task's
    loss; MSE: `F.mse_loss` over all points, as always).

    There is no inner loop in training; at meta-test time it is fine-tuned by the same
    shared evaluation as every other algorithm (SGD with LR_base on the support set).
    """

    def __init__(self, hp, generator, device="cpu", network=None, problem=None, init="torch",
                 pretrain_points=PRETRAIN_POINTS[0]):
        self._use_points(pretrain_points)
        super().__init__(hp, generator, device, network, problem, init)

    def meta_gradient(self, batch, iteration: int = 0):
        if isinstance(self.network, NetworkSpec):
            self.problem.check_inputs(batch.x_support)
        x, y = self.fitted_points(batch)
        loss = self.task_loss_of(self.net(x), y).mean()  # MSE: one scalar already (mean() leaves it as is)
        return loss.detach(), list(torch.autograd.grad(loss, self.meta_parameters))


class TorchReptile(LoopLearner):
    """Reptile (Nichol et al. 2018), task by task with plain autograd.

    Inner loop: S SGD steps with LR_base on the support set. The outer "gradient" is
    θ − mean_t(φ_t) and is handed to Adam with LR_meta, like every other algorithm's
    meta-gradient. The reported loss is the mean query loss after adaptation. Both losses are the
    task's (`task_loss_of`: MSE through `F.mse_loss`, as always).
    """

    def meta_gradient(self, batch, iteration: int = 0):
        if isinstance(self.network, NetworkSpec):
            self.problem.check_inputs(batch.x_support)
        theta = [p.detach() for p in self.meta_parameters]
        pseudo = [torch.zeros_like(p) for p in theta]
        total = torch.zeros((), device=self.device, dtype=theta[0].dtype)
        for t in range(len(batch)):
            phi = [p.clone().requires_grad_() for p in theta]
            for _ in range(self.hp.inner_steps):
                loss = self.task_loss_of(
                    torch.func.functional_call(self.net, dict(zip(self._names, phi)), batch.x_support[t]),
                    batch.y_support[t])
                grads = torch.autograd.grad(loss, phi)
                phi = [(p - self.hp.lr_base * g).detach().requires_grad_() for p, g in zip(phi, grads)]
            with torch.no_grad():
                out = torch.func.functional_call(self.net, dict(zip(self._names, phi)), batch.x_query[t])
                total += self.task_loss_of(out, batch.y_query[t]) / len(batch)
                for acc, p0, p in zip(pseudo, theta, phi):
                    acc += (p0 - p) / len(batch)
        return total, pseudo

    @property
    def _names(self):
        return [name for name, _ in self.net.named_parameters()]
