"""The vectorised `func` engine: every algorithm as pure batched tensor functions.

No Python loop over tasks and no module cloning. Meta-parameters carry a leading ensemble
dimension [members, ...]; tasks are flattened into one batch dimension [members·tasks, ...]
and a member's initialisation serves all its tasks without being copied (its tasks are
folded into the rows of one GEMM, `algorithms.network.linear`). Each inner step is the
MLP's backward pass written out by hand (`mlp_gradients`) followed by an SGD update.

Two ways to the meta-gradient, compared number for number by the tests:

* `meta_gradient` (the one training uses): reverse mode by hand. The forward pass keeps a
  tape (each step's parameters, layer inputs and deltas); the reverse pass applies, per
  step, the vector-Jacobian product of θ ↦ θ − r·∇L(θ), i.e. a Hessian-vector product of
  the support loss (`mlp_gradients_backward`). No autograd graph: about 3x fewer ops than
  autograd's double backward, which is what bounds speed at these tiny sizes.
* `meta_gradient_autograd`: autograd through `member_losses` (same forward, built from
  differentiable ops), kept as the reference.

A single run is an ensemble of one; an ensemble trains several runs (seeds, LR_base,
LR_meta; same S and meta-batch) in one program, each with its own parameters, task stream
and Adam state. Members never interact: the summed loss has a block-diagonal Jacobian, so
each member's gradient is exactly its own.

`checkpoint_inner` trades compute for memory on long inner loops: the S steps run in
segments (⌈√S⌉ steps each for True, or the given length); only the parameters at segment
boundaries are kept and each segment is recomputed during the reverse pass, so memory is
O(√S) instead of O(S) (measured at S = 100: 33 MB -> 5.5 MB, ~1.4x the time). The autograd
reference does the same with `torch.utils.checkpoint`.

`compile=True` (the sweep key `compile`) compiles the whole step, the hand-written
meta-gradient and the stacked Adam update, into one Inductor program that updates the
parameters' buffer and Adam's moments in place: the ~200-900 small ops of a step become a few
kernels. The step is traced once into an aten graph (`make_fx`) and called without TorchDynamo
(`MetaLearner._compile_traced`: no guards to check per call, which at S = 1 was a fifth of the
compiled step). One program per pattern of loss weights and batch shape (a weight that is
neither 0 nor 1, MSL's annealed ones, enters as a tensor so annealing does not recompile); its
trace and first call are timed into `compile_seconds` (recorded apart from the step time). On CPU
a program is an AOTInductor library kept with a record of its trace, so a later process (another
cell, seed or worker) loads it in milliseconds, neither tracing nor importing Inductor
(`MetaLearner._compile_traced`, `algorithms.base.compiled_program`). Its
floats differ from eager ones by rounding and may differ with the ensemble's size, so a compiled
learner does not ensemble (a cell's numbers depend on its configuration alone).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch.utils.checkpoint import checkpoint

from algorithms.adam import StackedAdam
from algorithms.base import Adaptation, HyperParams, MetaLearner, mse_only_refusal
from algorithms.network import (as_spec, make_network, mlp_backward, mlp_forward, mlp_gradients, mlp_gradients_backward,
                                mse_scale, parameter_names, scaled)
from algorithms.generic_engine import PRETRAIN_POINTS, GenericPretrain, GenericReptile, PretrainPoints
from algorithms.rules import InnerRule, adapted_mask, has_context, has_state
from tasks import TaskBatch
from tasks.problem import refuse_unless_mse


class FuncLearner(MetaLearner):
    """Any rule the hand-written pass covers (`rule.fast_update` "sgd" or "per-entry", any number
    of adapted last layers, first or second order, any loss weights) on a ReLU MLP.

    `rule` is bound per algorithm by the registry; other rules and networks run on the generic
    engine (`algorithms.generic_engine`), which the registry substitutes.
    """

    stacked_batches = True
    ensembles = True  # a member computes bitwise what the run alone computes (tested); eager only
    thread_invariant = True  # tested: tests/test_sweep.py
    engine = "accelerated"
    compiles = True  # `compile=True`: the meta-gradient through torch.compile
    rule: InnerRule = InnerRule()

    @classmethod
    def covers(cls, rule: InnerRule) -> bool:
        return rule.fast_update in ("sgd", "per-entry")

    @classmethod
    def covers_network(cls, network) -> bool:
        return as_spec(network).accelerated

    @classmethod
    def problem_refusal(cls, problem):
        """Its reverse pass is MSE's on 1 -> 1 networks, written out (`get_learner_class` runs
        another problem on the generic engine instead, or on `problem_fallback`)."""
        return mse_only_refusal(problem, "the accelerated engine")

    @classmethod
    def refusal(cls, rule, network):
        """The hand-written pass adapts the last k >= 1 whole layers (weight and bias), stateless, no context."""
        if has_state(rule) or has_context(rule):
            return "the hand-written engine runs stateless SGD without context"
        names = parameter_names(network)
        mask = adapted_mask(rule, names)
        frozen = mask.index(True) if any(mask) else len(mask)
        if frozen % 2 or frozen == len(mask) or not all(mask[frozen:]):
            return (f"the hand-written engine adapts the last whole layers only, but the rule adapts "
                    f"{[n for n, a in zip(names, mask) if a] or 'none'} of {list(names)}")
        return None

    @property
    def first_order(self) -> bool:
        return self.rule.first_order

    @property
    def learned_rates(self) -> bool:
        return self.rule.fast_update == "per-entry"

    def __init__(self, hp: HyperParams | Sequence[HyperParams], generator: torch.Generator | Sequence[torch.Generator],
                 device: str = "cpu", checkpoint_inner: bool | int = False, network=None, compile: bool = False,
                 problem=None, init: str = "torch"):
        # MSE on 1 -> 1 networks only: its reverse pass is MSE's, written out (`get_algorithm` runs a rule with
        # another loss on the generic engine instead)
        refuse_unless_mse(problem, f"the accelerated engine ({type(self).__name__})")
        hps = list(hp) if isinstance(hp, (list, tuple)) else [hp]
        generators = list(generator) if isinstance(generator, (list, tuple)) else [generator]
        if len(hps) != len(generators):
            raise ValueError(f"{len(hps)} hyperparameter sets but {len(generators)} generators")
        if compile and (len(hps) > 1 or not self.compiles):
            raise ValueError(f"compile=True runs one {type(self).__name__} member per learner on the meta-gradient "
                             f"it compiles (got {len(hps)} members)")
        shared = {(h.inner_steps, h.meta_batch, h.iterations, h.msl_anneal_iters) for h in hps}
        if len(shared) != 1:
            raise ValueError("ensemble members must share inner_steps, meta_batch, iterations and msl_anneal_iters; "
                             f"got {sorted(shared)}")
        if isinstance(checkpoint_inner, bool) or checkpoint_inner is None:
            segment = math.isqrt(max(hps[0].inner_steps - 1, 0)) + 1 if checkpoint_inner else 0  # ceil(sqrt(S))
        elif isinstance(checkpoint_inner, int) and checkpoint_inner >= 1:
            segment = checkpoint_inner
        else:
            raise ValueError(f"checkpoint_inner must be a bool or a segment length >= 1, got {checkpoint_inner!r}")
        super().__init__(hps[0], generators[0], device)
        self.hps = hps
        self.n_members = len(hps)
        self.checkpoint_inner = checkpoint_inner
        self.segment = segment
        self.network = as_spec(network)
        if not self.network.accelerated:
            raise ValueError(f"the accelerated engine covers ReLU networks, not {self.network.name!r} "
                             "(the registry runs those on the generic engine)")
        nets = [make_network(g, device=device, network=self.network, init=init) for g in generators]
        stacked = [torch.stack(ps).detach() for ps in zip(*(net.parameters() for net in nets))]
        # float64: cast to the parameters' dtype where used, so a float64 run gets the exact rate
        self.lr_base = torch.tensor([h.lr_base for h in hps], dtype=torch.float64, device=self.device)
        self.lr_meta = torch.tensor([h.lr_meta for h in hps], device=self.device)
        rates = [torch.ones_like(p) * _per_member(self.lr_base.to(p.dtype), p) for p in stacked] if self.learned_rates else []
        # Every meta-parameter is a view of one [members, P] buffer: Adam updates it in one op.
        self.meta_parameters = _views_of_one_buffer(stacked + rates)
        self.params = self.meta_parameters[:len(stacked)]
        self.rates = self.meta_parameters[len(stacked):]
        refused = self.refusal(self.rule, self.network)
        if refused:
            raise ValueError(f"{self.rule!r}: {refused} (the registry runs it on the generic engine)")
        self.frozen_layers = adapted_mask(self.rule, parameter_names(self.network)).index(True) // 2
        self.compile = compile
        if compile:
            self.engine = "accelerated+compile"

    def double(self) -> "FuncLearner":
        n = len(self.params)
        self.meta_parameters = _views_of_one_buffer([p.detach().double() for p in self.meta_parameters])
        self.params, self.rates = self.meta_parameters[:n], self.meta_parameters[n:]
        return self

    def make_optimizer(self):
        return StackedAdam(self.meta_parameters, self.lr_meta)

    def step(self, batch, iteration: int = 0):
        if not hasattr(self, "optimizer"):
            self.optimizer = self.make_optimizer()
        if self.compile:
            return {"loss": self._compiled_step(batch, iteration)}
        loss, grads = self.meta_gradient(batch, iteration)
        self.optimizer.step(grads)
        return {"loss": loss}

    # -- the pure parts ---------------------------------------------------------------
    def inner_rates(self) -> list:
        """Per-parameter inner rates, shaped to broadcast over [members, tasks, ...]; None: frozen."""
        rates = [r.unsqueeze(1) for r in self.rates] if self.learned_rates else \
            [_per_member(self.lr_base.to(p.dtype), p).unsqueeze(1) for p in self.params]
        frozen = 2 * self.frozen_layers
        return [None] * frozen + rates[frozen:]

    def loss_weights(self, iteration: int) -> list[float]:
        return self.rule.loss_weights(self.hp, iteration)

    def _flat_batch(self, batch):
        """Support and query sets as [members·tasks, points, 1]; frozen leading layers applied once."""
        tensors = [t.flatten(0, 1) for t in (batch.x_support, batch.y_support, batch.x_query, batch.y_query)]
        params, rates = list(self.params), self.inner_rates()
        frozen = 2 * self.frozen_layers
        if frozen:  # ANIL: the body's features do not change in the inner loop
            for i in (0, 2):
                tensors[i] = torch.relu(mlp_forward(params[:frozen], tensors[i])[0])
            params, rates = params[frozen:], rates[frozen:]
        return tensors, params, rates

    def _inner_step(self, params, x, y, rates):
        """One SGD step on every task of every member: [M or M·T, ...] -> [M·T, ...]."""
        members, batch = self.n_members, x.shape[0]
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.first_order):
            grads = mlp_gradients(params, x, y, [r is not None for r in rates])
        new = []
        for p, g, r in zip(params, grads, rates):
            if g is None:
                new.append(p)
                continue
            shape = g.shape[1:]
            start = p.view(members, p.shape[0] // members, *shape)  # [M, 1 or T, ...]
            per_task = g.view(members, batch // members, *shape)
            new.append(torch.addcmul(start, r, per_task, value=-1).view(batch, *shape))
        return new

    def _query_loss(self, params, x, y) -> torch.Tensor:
        """Mean query MSE per member [M] (every task has the same number of points)."""
        return (mlp_forward(params, x)[0] - y).pow(2).view(self.n_members, -1).mean(1)

    def _steps(self, params, data, rates, weights, first: int, last: int):
        """Inner steps first..last; returns Σ_s w_s·(query loss after step s) [M] and the parameters."""
        xs, ys, xq, yq = data
        loss = None
        for s in range(first, last + 1):
            if s > 0:
                params = self._inner_step(params, xs, ys, rates)
            if weights[s]:
                term = self._query_loss(params, xq, yq)
                term = term if weights[s] == 1 else weights[s] * term
                loss = term if loss is None else loss + term
        return loss, params

    def member_losses(self, batch, iteration: int = 0) -> torch.Tensor:
        """Meta-loss of each member [members]: weighted query losses over inner steps 0..S."""
        weights = self.loss_weights(iteration)
        data, params, rates = self._flat_batch(batch)
        steps = len(weights) - 1
        if not self.segment or self.first_order or steps <= 1 or not torch.is_grad_enabled():
            return self._steps(params, data, rates, weights, 0, steps)[0]
        loss, params = self._steps(params, data, rates, weights, 0, 0)
        for first in range(1, steps + 1, self.segment):
            last = min(first + self.segment - 1, steps)

            def segment(*flat, first=first, last=last):
                term, out = self._steps(list(flat), data, rates, weights, first, last)
                return (term if term is not None else flat[0].new_zeros(self.n_members)), *out

            term, *params = checkpoint(segment, *params, use_reentrant=False)
            loss = term if loss is None else loss + term
        return loss

    def meta_gradient_autograd(self, batch, iteration: int = 0):
        """The reference meta-gradient: autograd through `member_losses` (tests compare the two)."""
        with torch.enable_grad():
            losses = self.member_losses(batch, iteration)
            grads = torch.autograd.grad(losses.sum(), self.meta_parameters, materialize_grads=True)
        return losses.detach(), list(grads)

    # -- the fast meta-gradient: reverse mode by hand, no autograd graph -------------------
    def meta_gradient(self, batch, iteration: int = 0):
        """Meta-loss per member [M] and the gradient of their sum for each meta-parameter.

        The same maths as `meta_gradient_autograd`, with the reverse pass written out: a tape
        of each inner step's layer inputs and deltas, then per step the vector-Jacobian
        product of the SGD update (a Hessian-vector product of the support loss, skipped for
        first-order methods). With `checkpoint_inner` only the parameters at segment
        boundaries are kept and each segment is recomputed during the reverse pass.
        """
        weights = self.loss_weights(iteration)
        with torch.no_grad():
            if self.compile:
                return self._compiled_meta_gradient(batch, weights)
            return self._meta_gradient(batch, weights)

    # -- compiled programs (`compile=True`): traced once, called without TorchDynamo ------------
    def _program(self, kind: str, batch, weights, state: list[torch.Tensor], scalars=()):
        """Run compiled program `kind` ("meta_gradient" or "step") on `state` tensors and the batch.

        The loss weights 0 and 1 stay constants (their branches and multiplications are the
        eager ones); any other weight (MSL's annealed ones) enters through one tensor with
        `scalars` (Adam's bias corrections), so annealing does not recompile. The program is
        keyed by everything its trace depended on (`MetaLearner._compile_traced`): the kind, the
        weights' pattern and the inputs' shapes, strides and dtypes (Inductor's program also
        asserts its inputs' sizes and strides on every call).
        """
        pattern = tuple(w if w in (0, 1) else None for w in weights)
        data = [batch.x_support, batch.y_support, batch.x_query, batch.y_query]
        values = torch.tensor([*scalars, *weights], dtype=state[0].dtype, device=self.device)
        inputs = [*state, *data, values]
        key = (kind, pattern, state[0].dtype, *((tuple(t.shape), t.stride(), t.dtype) for t in data))

        def build():  # the state is what changes between calls: none of it may be baked in
            program = self._traced_step if kind == "step" else self._traced_meta_gradient
            return self._compile_traced(lambda *args: program(pattern, len(scalars), *args), inputs, keep=state,
                                        key=key)

        return self._compiled_call(key, build, *inputs)

    def _compiled_meta_gradient(self, batch, weights):
        loss, *grads = self._program("meta_gradient", batch, weights, [p.detach() for p in self.meta_parameters])
        return loss, grads

    def _compiled_step(self, batch, iteration: int):
        """Meta-gradient and Adam as one program: the parameters' buffer and Adam's moments are
        updated in place by it (the eager Adam's ~12 ops and the gradients' concatenation fused
        into the same kernels)."""
        optimizer = self.optimizer
        if optimizer.flat is None:
            raise RuntimeError("the compiled step needs the meta-parameters as views of one buffer")
        corrections = optimizer.advance()
        with torch.no_grad():
            return self._program("step", batch, self.loss_weights(iteration),
                                 [optimizer.flat, optimizer.m, optimizer.v], corrections)[0]

    def _traced_meta_gradient(self, pattern, n_scalars, *args):
        *meta, xs, ys, xq, yq, values = args
        weights = [values[n_scalars + s] if w is None else w for s, w in enumerate(pattern)]
        loss, grads = self._meta_gradient(TaskBatch(xs, ys, xq, yq), weights, meta)
        return (loss, *grads)

    def _traced_step(self, pattern, n_scalars, flat, m, v, xs, ys, xq, yq, values):
        meta = _split_views(flat, [p.shape for p in self.meta_parameters])
        loss, *grads = self._traced_meta_gradient(pattern, n_scalars, *meta, xs, ys, xq, yq, values)
        self.optimizer.update(flat, m, v, grads, values[0], values[1])
        return (loss,)

    def _meta_gradient(self, batch, weights, meta=None):
        """`meta`: the meta-parameters to differentiate at (default: the learner's own)."""
        meta = self.meta_parameters if meta is None else meta
        params, learned = meta[:len(self.params)], meta[len(self.params):]
        xs, ys, xq, yq = (t.flatten(0, 1) for t in (batch.x_support, batch.y_support, batch.x_query, batch.y_query))
        frozen = 2 * self.frozen_layers
        body = params[:frozen]
        if frozen:  # ANIL: the body's features do not change in the inner loop
            body_s, body_q = mlp_forward(body, xs), mlp_forward(body, xq)
            xs, xq = torch.relu(body_s[0]), torch.relu(body_q[0])
        data = (xs, ys, xq, yq)
        rates = self._rates_for(xs.shape[0], learned)
        theta = [p.detach() for p in params[frozen:]]
        steps = len(weights) - 1
        length = self.segment if self.segment and not self.first_order else steps + 1
        segments = [(first, min(first + length - 1, steps)) for first in range(0, steps + 1, length)]
        keep = len(segments) == 1
        starts, loss, tape = [], None, []
        for first, last in segments:
            starts.append(theta)
            theta, term, tape = self._run(theta, data, rates, weights, first, last, keep)
            loss = term if loss is None else loss + term
        state = {"theta_bar": None, "rate_bars": [None] * len(theta), "xs_bar": None, "xq_bar": None}
        while segments:
            (first, last), start = segments.pop(), starts.pop()  # boundaries are freed once used
            if not keep:
                tape = self._run(start, data, rates, weights, first, last, True)[2]
            self._reverse(tape, state, data, rates, need_input=bool(frozen))  # empties the tape
        grads = state["theta_bar"]
        if frozen:
            bars = None
            for (out, inputs), x, x_bar in ((body_s, xs, state["xs_bar"]), (body_q, xq, state["xq_bar"])):
                if x_bar is not None:
                    bars = mlp_backward(body, inputs, torch.ops.aten.threshold_backward(x_bar, x, 0), into=bars)[0]
            grads = [g if g is not None else torch.zeros_like(p) for g, p in zip(bars or [None] * frozen, body)] + grads
        if self.learned_rates:
            grads += [g if g is not None else torch.zeros_like(r) for g, r in zip(state["rate_bars"], learned)]
        return loss, grads

    def _rates_for(self, n_rows: int, learned=None):
        """(loss scale, per-entry rates) of the inner SGD step on n_rows = members·tasks tasks.

        A fixed LR_base is folded into the support loss (`mlp_gradients(loss_scale=...)`) as
        [M·T, 1, 1], also for a lone member: a run alone computes exactly what it computes as an
        ensemble member (a float would round differently). The gradients come out
        pre-multiplied. Meta-SGD's learned per-entry rates multiply the gradients instead.
        """
        frozen = 2 * self.frozen_layers
        if self.learned_rates:
            return 1.0, [self._per_task(r.detach()) for r in (self.rates if learned is None else learned)[frozen:]]
        tasks = n_rows // self.n_members
        return self.lr_base.to(self.params[0].dtype).repeat_interleave(tasks).view(-1, 1, 1), None

    def _per_task(self, t):
        """[M or M·T, ...] -> broadcastable against [M, T, ...] (a lone member needs no task dim)."""
        return t if self.n_members == 1 else t.view(self.n_members, -1, *t.shape[1:])

    def _update(self, p, g, r):
        """p − g (rate already in g) or p − r·g: p [M or M·T, ...], g [M·T, ...] -> [M·T, ...]."""
        if r is None:
            new = torch.sub(self._per_task(p), self._per_task(g))
        else:
            new = torch.addcmul(self._per_task(p), r, self._per_task(g), value=-1)
        return new.view(g.shape)

    def _run(self, theta, data, rates, weights, first, last, keep):
        """Inner steps first..last without a graph: (θ after `last`, Σ_s w_s·query loss [M], tape)."""
        xs, ys, xq, yq = data
        loss_scale, entry_rates = rates
        loss, tape = None, []
        for s in range(first, last + 1):
            if s > 0:
                record = {} if keep and not self.first_order else None
                grads = mlp_gradients(theta, xs, ys, tape=record, loss_scale=loss_scale)
                new = [self._update(p, g, r) for p, g, r in zip(theta, grads, entry_rates or [None] * len(grads))]
                if keep:  # the gradients only for Meta-SGD's rate adjoints
                    tape.append(("step", theta, record, grads if entry_rates is not None else None))
                theta = new
            if _nonzero(weights[s]):
                out, inputs = mlp_forward(theta, xq)
                diff = out - yq
                term = diff.pow(2).view(self.n_members, -1).mean(1)
                term = term if _is_one(weights[s]) else weights[s] * term
                loss = term if loss is None else loss + term
                if keep:
                    tape.append(("query", theta, inputs, diff, weights[s]))
        return theta, loss, tape

    def _reverse(self, tape, state, data, rates, need_input):
        """Back through a tape: updates the adjoint of θ (and of rates and ANIL's features) in `state`."""
        xs, ys, xq, yq = data
        loss_scale, entry_rates = rates
        members = self.n_members
        theta_bar = state["theta_bar"]
        while tape:
            entry = tape.pop()  # each step's record is freed as soon as it is used
            if entry[0] == "query":
                _, theta, inputs, diff, weight = entry
                count = diff.numel() // members  # d(mean over the member's entries)
                out_bar = scaled(diff, 2.0 * weight / count) if not torch.is_tensor(weight) else \
                    diff * (weight * (2.0 / count))
                theta_bar, x_bar = mlp_backward(theta, inputs, out_bar, need_input=need_input, into=theta_bar)
                state["xq_bar"] = _add(state["xq_bar"], x_bar)
                continue
            # θ_new = θ − g_r(θ) with g_r = r·∇L (r folded into the loss, or per entry):
            # θ̄ = θ̄_new (summed over tasks where θ is shared) − (∂g_r/∂θ)ᵀ θ̄_new
            _, theta, record, grads = entry
            new_bar = theta_bar
            theta_bar = [b if p.shape[0] == b.shape[0] else b.view(p.shape[0], -1, *b.shape[1:]).sum(1)
                         for p, b in zip(theta, new_bar)]
            if entry_rates is not None:  # Meta-SGD: r̄ −= Σ_tasks g ⊙ θ̄_new
                state["rate_bars"] = [_add(acc, -_sum_tasks(self._per_task(g * b), members))
                                      for acc, g, b in zip(state["rate_bars"], grads, new_bar)]
            if not self.first_order:
                grad_bars = new_bar if entry_rates is None else \
                    [(r * self._per_task(b)).view(b.shape) for r, b in zip(entry_rates, new_bar)]
                bars, x_bar = mlp_gradients_backward(theta, record, grad_bars, ys, loss_scale, need_input)
                theta_bar = [torch.sub(a, b) for a, b in zip(theta_bar, bars)]
                state["xs_bar"] = _add(state["xs_bar"], None if x_bar is None else -x_bar)
        state["theta_bar"] = theta_bar

    def adaptation(self, member: int = 0) -> Adaptation:
        params = [p[member].detach() for p in self.params]
        if self.learned_rates:
            rates = [r[member].detach() for r in self.rates]
        else:
            rates = [self.hps[member].lr_base] * len(params)  # the configured float, not its float32 copy
        frozen = 2 * self.frozen_layers
        return Adaptation(params, [None] * frozen + rates[frozen:], network=self.network)


def _nonzero(weight) -> bool:
    """A loss weight that is a tensor (compiled MSL) is taken as non-zero: its pattern said so."""
    return torch.is_tensor(weight) or weight != 0


def _is_one(weight) -> bool:
    return not torch.is_tensor(weight) and weight == 1


def _add(a, b):
    return b if a is None else a if b is None else a + b


def _sum_tasks(t: torch.Tensor, members: int) -> torch.Tensor:
    """[M, T, ...] (or [T, ...] for a lone member) -> [M, ...]."""
    return t.sum(1) if members > 1 else t.sum(0, keepdim=True)


def _per_member(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[members] -> [members, 1, ...] to broadcast against a stacked parameter."""
    return values.view(-1, *[1] * (like.dim() - 1))


def _views_of_one_buffer(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Copy [members, ...] tensors into one [members, P] buffer; return leaf views of it."""
    members = tensors[0].shape[0]
    buffer = torch.cat([t.reshape(members, -1) for t in tensors], 1)
    return [view.requires_grad_() for view in _split_views(buffer, [t.shape for t in tensors])]


def _split_views(buffer: torch.Tensor, shapes) -> list[torch.Tensor]:
    """Views of a [members, P] buffer in the given [members, ...] shapes, in order."""
    views, offset = [], 0
    for shape in shapes:
        size = math.prod(shape[1:])
        views.append(buffer[:, offset:offset + size].view(shape))
        offset += size
    return views


class FuncPretrain(PretrainPoints, FuncLearner):
    """Joint pre-training: one network regresses every task's support and query points (or its
    support points only: `pretrain_points`).

    Another problem than 1 -> 1 MSE (classification) runs `problem_fallback`, the generic engine's
    pre-training with the task's loss; its record's `engine` says "generic"."""

    compiles = False  # one forward and backward: nothing to fuse worth a compile
    problem_fallback = GenericPretrain

    def __init__(self, hp, generator, device: str = "cpu", checkpoint_inner: bool | int = False, network=None,
                 compile: bool = False, problem=None, init: str = "torch", pretrain_points: str = PRETRAIN_POINTS[0]):
        self._use_points(pretrain_points)
        super().__init__(hp, generator, device, checkpoint_inner, network, compile, problem, init)

    def _points(self, batch):
        """The fitted points as [members·tasks, points, 1]."""
        return (t.flatten(0, 1) for t in self.fitted_points(batch, dim=-2))

    def member_losses(self, batch, iteration: int = 0):
        x, y = self._points(batch)
        return self._query_loss(self.params, x, y)  # the parameters are shared by all tasks

    def meta_gradient(self, batch, iteration: int = 0):
        with torch.no_grad():
            x, y = self._points(batch)
            out, inputs = mlp_forward(self.params, x)
            diff = out - y
            grads = mlp_backward(self.params, inputs, diff * (2.0 / (diff.numel() // self.n_members)))[0]
            return diff.pow(2).view(self.n_members, -1).mean(1), grads


class FuncReptile(FuncLearner):
    """Reptile: S plain SGD steps per task, outer pseudo-gradient θ − mean_t(φ_t) into Adam.

    Another problem than 1 -> 1 MSE runs `problem_fallback` (the generic engine's Reptile with the
    task's loss; `engine` "generic")."""

    first_order = True
    compiles = False
    problem_fallback = GenericReptile

    def meta_gradient(self, batch, iteration: int = 0):
        with torch.no_grad():
            xs, ys, xq, yq = (t.flatten(0, 1) for t in (batch.x_support, batch.y_support, batch.x_query, batch.y_query))
            loss_scale, _ = self._rates_for(xs.shape[0])
            theta = [p.detach() for p in self.params]
            phi = theta
            for _ in range(self.hp.inner_steps):
                grads = mlp_gradients(phi, xs, ys, loss_scale=loss_scale)
                phi = [self._update(p, g, None) for p, g in zip(phi, grads)]
            losses = self._query_loss(phi, xq, yq)
            pseudo = [t - f.view(self.n_members, -1, *t.shape[1:]).mean(1) for t, f in zip(theta, phi)]
        return losses, pseudo

    def meta_gradient_autograd(self, batch, iteration: int = 0):
        """Reptile's outer step is not a gradient: there is no autograd reference (the tests
        compare it with the `torch` backend instead)."""
        return self.meta_gradient(batch, iteration)
